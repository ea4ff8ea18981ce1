"""Deploy, list and tear down SageMaker endpoints (real-time, serverless, async): the
public API in one import.

The work is split along its seams, one module each: :mod:`.aws` (sessions, clients, the
wording of AWS errors), :mod:`.resources` (names, ownership tags, look-ups),
:mod:`.scaling` (autoscaling), :mod:`.plan`, :mod:`.rollout`, :mod:`.steps` and
:mod:`.ledger` (``deploy``: its checked inputs, its course, its steps and their undo), :mod:`.endpoints` (listing, status) and :mod:`.teardown`. This module gathers
their public names, so ``from twinnet.aws.sagemaker import deploy`` keeps working.

The calls are the ones AWS documents; nothing here knows whether it talks to AWS or to a
moto server, because boto3 itself honours ``AWS_ENDPOINT_URL``, the standard credential
variables and profiles.
"""

from __future__ import annotations

from twinnet.aws.endpoints import EndpointInfo, list_endpoints
from twinnet.aws.ledger import Reporter
from twinnet.aws.modes import MODES, AsyncOutput, Serverless
from twinnet.aws.plan import artifact_digest, validate_role_arn
from twinnet.aws.resources import (
    DEFAULT_INSTANCE_TYPE,
    TAG_ARTIFACT,
    TAG_ARTIFACTS_PREFIX,
    TAG_DEPLOYMENT,
    TAG_ENDPOINT,
    TAG_MANAGED,
    VARIANT,
    validate_endpoint_name,
)
from twinnet.aws.rollout import DeployResult, deploy
from twinnet.aws.scaling import SCALABLE_DIMENSION, SCALING_METRIC, Autoscale, parse_autoscale
from twinnet.aws.session import open_session
from twinnet.aws.steps import wait_in_service
from twinnet.aws.teardown import teardown

__all__ = [
    "MODES",
    "AsyncOutput",
    "Serverless",
    "Autoscale",
    "DeployResult",
    "EndpointInfo",
    "Reporter",
    "VARIANT",
    "DEFAULT_INSTANCE_TYPE",
    "TAG_ENDPOINT",
    "TAG_MANAGED",
    "parse_autoscale",
    "validate_role_arn",
    "validate_endpoint_name",
    "open_session",
    "artifact_digest",
    "deploy",
    "list_endpoints",
    "teardown",
    "wait_in_service",
    # Tag names and scaling constants, importable from here too.
    "TAG_ARTIFACT",
    "TAG_ARTIFACTS_PREFIX",
    "TAG_DEPLOYMENT",
    "SCALABLE_DIMENSION",
    "SCALING_METRIC",
]
