"""From a model directory to an Amazon SageMaker endpoint, and back to nothing.

- :mod:`.sagemaker` is the public API of deploy, listing and teardown. The work lives in
  :mod:`.session` (sessions, clients, AWS errors in one vocabulary), :mod:`.resources`
  (names, ownership tags), :mod:`.modes` (real-time, serverless, async), :mod:`.scaling`;
  ``deploy`` in :mod:`.plan` (checked inputs), :mod:`.fit` (will it fit serverless?),
  :mod:`.rollout` (its course), :mod:`.steps` and :mod:`.ledger` (each step and its undo);
  :mod:`.endpoints` (listing, status) and :mod:`.teardown`. The same calls run against
  AWS and against a moto server (``AWS_ENDPOINT_URL``).
- ``model.tar.gz`` is built by :mod:`twinnet.container.package`; invoking an endpoint is
  :class:`twinnet.clients.sagemaker.SageMakerClient`.

The submodules are imported on demand, so ``import twinnet.aws`` needs neither boto3 nor torch.
"""

from __future__ import annotations

__all__ = [
    "endpoints",
    "fit",
    "ledger",
    "modes",
    "plan",
    "resources",
    "rollout",
    "sagemaker",
    "scaling",
    "session",
    "steps",
    "teardown",
]
