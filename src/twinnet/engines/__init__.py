"""Serving engines that run the contract: TorchServe and Ray Serve.

- :mod:`.torchserve`: the ``.mar`` archive, the handler and the launcher;
- :mod:`.ray`: the Ray Serve deployment, its HTTP ingress and its launcher;
- :mod:`.server`: ``twinnet serve``'s start, status and stop for either engine;
- :mod:`.state`, :mod:`.health`, :mod:`.supervise`: the instance record, readiness and
  running in the foreground, shared by both.

Submodules are imported on demand: the handler needs TorchServe, the launcher needs Java,
the Ray engine needs ``twinnet[ray]``.
"""
