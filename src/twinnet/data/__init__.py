"""Labelled images: folders and label rules, pairs, splits, and the bundled datasets.

- :mod:`.items`: scanning a folder into :class:`~.items.LabelledImages`, pairs and splits;
- :mod:`.datasets`: Oxford-IIIT Pet, AT&T faces, digits and generated shapes.
"""
