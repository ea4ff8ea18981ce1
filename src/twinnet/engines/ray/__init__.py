"""Ray Serve: the deployment (:mod:`twinnet.engines.ray.engine`), its HTTP side
(:mod:`twinnet.engines.ray.ingress`), the background process (:mod:`twinnet.engines.ray.launch`)
and start/status/stop (:mod:`twinnet.engines.ray.server`); :mod:`twinnet.engines.ray.adapter`
is its :class:`~twinnet.engines.base.Engine`.
"""
