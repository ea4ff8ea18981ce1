"""Serving with TorchServe: the handler, the archive builder and the launcher.

- :mod:`.options` is :class:`~.options.ServeOptions`, the one schema of the archive's
  ``model-config.yaml`` (batching, workers, threads, precision, default response format);
- :mod:`.archive` builds ``<name>.mar`` (handler + model directory + ``model-config.yaml``);
- :mod:`.handler` is the TorchServe handler, a thin layer over :class:`twinnet.inference.Twin`;
- :mod:`.server` starts, watches and stops TorchServe (``twinnet serve``), with
  :mod:`.state`, :mod:`.launch` and :mod:`.health` doing the work. The SageMaker container
  (:mod:`twinnet.deploy.container`) starts TorchServe on loopback with the same
  :func:`.server.start` and answers SageMaker's ``/ping`` itself, from
  :func:`.health.model_ready`: TorchServe's own ``/ping`` says "Healthy" before the model
  has loaded.

Submodules are imported on demand: the handler needs TorchServe, the launcher needs Java.
"""

from __future__ import annotations

__all__ = ["archive", "handler", "health", "launch", "options", "server", "state"]
