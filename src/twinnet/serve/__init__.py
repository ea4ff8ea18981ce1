"""Serving: one HTTP contract, two engines (TorchServe and Ray Serve).

- :mod:`.service` is the contract over one model, engine-neutral: rows in, one reply each;
- :mod:`.options` is :class:`~.options.ServeOptions`, the one schema of the archive's
  ``model-config.yaml`` (batching, workers, threads, precision, default response format);
- :mod:`.archive` builds ``<name>.mar`` (handler + model directory + ``model-config.yaml``,
  and a gallery index with :mod:`.gallery`);
- :mod:`.handler` is the TorchServe handler, a thin adapter over :mod:`.service`;
- :mod:`.server` starts, watches and stops TorchServe (``twinnet serve``), with
  :mod:`.state`, :mod:`.launch` and :mod:`.health` doing the work. The SageMaker container
  (:mod:`twinnet.deploy.container`) starts TorchServe on loopback with the same
  :func:`.server.start` and answers SageMaker's ``/ping`` itself, from
  :func:`.health.model_ready`: TorchServe's own ``/ping`` says "Healthy" before the model
  has loaded;
- :mod:`.ray_engine` (deployment), :mod:`.ray_ingress` (HTTP side), :mod:`.ray_launch` (the
  background process) and :mod:`.ray_server` (start, status, stop) are the Ray Serve engine
  (``twinnet serve --engine ray``); :mod:`.supervise` runs either engine in the foreground.

Submodules are imported on demand: the handler needs TorchServe, the launcher needs Java,
the Ray engine needs ``twinnet[ray]``.
"""

from __future__ import annotations

__all__ = [
    "archive",
    "gallery",
    "handler",
    "health",
    "launch",
    "options",
    "ray_engine",
    "ray_ingress",
    "ray_launch",
    "ray_server",
    "server",
    "service",
    "state",
    "supervise",
]
