"""Serving with TorchServe: the handler, the archive builder and the launcher.

- :mod:`.archive` builds ``<name>.mar`` (handler + model directory + ``model-config.yaml``);
- :mod:`.handler` is the TorchServe handler, a thin layer over :class:`twinnet.inference.Twin`;
- :mod:`.server` starts, watches and stops TorchServe (``twinnet serve``) and runs it in the
  foreground for the SageMaker container (:func:`.server.run_foreground`).

Submodules are imported on demand: the handler needs TorchServe, the launcher needs Java.
"""

from __future__ import annotations

__all__ = ["archive", "handler", "server"]
