"""From a model directory to an Amazon SageMaker real-time endpoint, and back to nothing.

- :mod:`.package` builds ``model.tar.gz`` (the TorchServe ``.mar`` at its root, as the
  serving container expects to find it in ``/opt/ml/model``).
- :mod:`.sagemaker` deploys, lists and tears down endpoints with boto3; the same calls run
  against AWS and against a moto server (``AWS_ENDPOINT_URL``).
- :mod:`.container` is the serving image's entrypoint (``twinnet container serve``).

The submodules are imported on demand, so ``import twinnet.deploy`` needs neither boto3
nor torch.
"""

from __future__ import annotations

__all__ = ["container", "package", "sagemaker"]
