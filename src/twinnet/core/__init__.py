"""The model and what every stage shares: spec, network, images, calibration maths, results.

- :mod:`.spec`: :class:`~.spec.ModelSpec`, saved as ``twinnet.json`` beside the weights;
- :mod:`.model`: :func:`~.model.build_model`, the only constructor, and the two heads;
- :mod:`.imaging`: decoding, resizing and the transforms the spec names;
- :mod:`.calibration`: the one cosine-to-probability mapping and threshold fitting;
- :mod:`.metrics`: ROC, EER, TAR@FAR and best thresholds on scored pairs;
- :mod:`.result`: :class:`~.result.CompareResult`, the answer every backend returns;
- :mod:`.artifacts`: the model directory (safetensors) and the original sample's seed format;
- :mod:`.version`: the package version.

Nothing here imports another twinnet package: the rest of the library builds on it.
"""
