"""Measuring a model on classes it never saw, and fitting its threshold.

- :mod:`.verification`: pair accuracy, ROC AUC, EER, k-fold and N-way one-shot;
- :mod:`.calibrate`: scoring held-out pairs and (re)fitting the calibration of a model.
"""
