"""TorchServe: the ``.mar`` (:mod:`twinnet.engines.torchserve.archive`), the handler
(:mod:`twinnet.engines.torchserve.handler`), the launcher
(:mod:`twinnet.engines.torchserve.launch`), start and stop
(:mod:`twinnet.engines.torchserve.server`); :mod:`twinnet.engines.torchserve.adapter` is its
:class:`~twinnet.engines.base.Engine`.
"""
