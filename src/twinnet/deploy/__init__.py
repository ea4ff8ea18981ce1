"""From a model directory to an Amazon SageMaker real-time endpoint, and back to nothing.

- :mod:`.package` builds ``model.tar.gz`` (the TorchServe ``.mar`` at its root, as the
  serving container expects to find it in ``/opt/ml/model``).
- :mod:`.sagemaker` is the public API of deploy, listing and teardown. The work lives in
  :mod:`.aws` (sessions, clients, AWS errors in one vocabulary), :mod:`.resources` (names,
  ownership tags), :mod:`.scaling`; ``deploy`` in :mod:`.plan` (checked inputs),
  :mod:`.rollout` (its course), :mod:`.steps` and :mod:`.ledger` (each step and its undo);
  :mod:`.endpoints` (listing, status) and :mod:`.teardown`. The same calls run against
  AWS and against a moto server (``AWS_ENDPOINT_URL``).
- :mod:`.container` is the serving image's entrypoint (``twinnet container serve``); its
  public port is :mod:`.gateway` (waitress: ``/ping`` from TorchServe's readiness, strict
  framing, read deadlines, bounded threads), which forwards ``/invocations`` through
  :mod:`.gateway_http` (a urllib3 pool to TorchServe on loopback).

Invoking an endpoint is :class:`twinnet.client.SageMakerClient` (``twinnet compare
--endpoint``, and its alias ``twinnet invoke``).

The submodules are imported on demand, so ``import twinnet.deploy`` needs neither boto3
nor torch.
"""

from __future__ import annotations

__all__ = [
    "aws",
    "container",
    "endpoints",
    "gateway",
    "gateway_http",
    "ledger",
    "package",
    "plan",
    "resources",
    "rollout",
    "sagemaker",
    "scaling",
    "steps",
    "teardown",
]
