"""Training with fastai: configuration, data loaders, losses, augmentation, the fit.

- :mod:`.fit`: :class:`~.fit.TrainConfig`, the recipes and :func:`~.fit.train`;
- :mod:`.loaders`: fastai ``DataLoaders`` of pairs (concat head) or images (cosine head);
- :mod:`.losses`: CosFace, NormFace, pair losses and the validation metrics;
- :mod:`.augment`: the augmentation policies;
- :mod:`.fastai_compat`: importing fastai quietly.
"""
