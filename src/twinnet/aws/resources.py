"""What twinnet owns in an AWS account: names, ownership tags, and the look-ups that read them.

Every resource ``deploy`` creates is tagged (``twinnet:endpoint`` = the endpoint), and
models and endpoint configs are named ``<endpoint>-<UTC timestamp>``. Rollout, listing and
teardown all decide what is theirs with the same few functions below, so "ours" means one
thing everywhere: carrying twinnet's ownership tags for that endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twinnet.aws.session import error_code, not_found
from twinnet.core.version import __version__
from twinnet.errors import TwinnetError

__all__ = [
    "DEFAULT_INSTANCE_TYPE",
    "TAG_ARTIFACT",
    "TAG_ARTIFACTS_PREFIX",
    "TAG_DEPLOYMENT",
    "TAG_ENDPOINT",
    "TAG_MANAGED",
    "VARIANT",
    "Owned",
    "base_name",
    "check_managed",
    "describe_endpoint",
    "find_owned",
    "is_ours",
    "model_data_url",
    "object_exists",
    "ownership_tags",
    "tag_dict",
    "validate_endpoint_name",
    "variant_models",
]

#: The single production variant every twinnet endpoint has.
VARIANT = "AllTraffic"
DEFAULT_INSTANCE_TYPE = "ml.m5.xlarge"
TAG_MANAGED = "twinnet:managed-by"
TAG_ENDPOINT = "twinnet:endpoint"
TAG_ARTIFACT = "twinnet:artifact"
TAG_DEPLOYMENT = "twinnet:deployment"
TAG_ARTIFACTS_PREFIX = "twinnet:artifacts"

_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_STAMP_LEN = len("-20240101-000000-000")


def validate_endpoint_name(name: str) -> str:
    """SageMaker's name rule: 1-63 letters, digits and hyphens, not starting with a hyphen."""
    if not _NAME_RE.match(name or "") or name.endswith("-"):
        raise TwinnetError(
            f"endpoint name {name!r} is invalid: use 1-63 letters, digits and hyphens, "
            "starting and ending with a letter or digit"
        )
    return name


def base_name(endpoint: str) -> str:
    """The endpoint name, cut so that ``<base>-<UTC timestamp>`` fits SageMaker's 63 characters."""
    return endpoint[: 63 - _STAMP_LEN]


def ownership_tags(endpoint: str, **extra: str) -> list[dict[str, str]]:
    """The tags that mark a resource as created by twinnet for ``endpoint``."""
    tags = {TAG_MANAGED: f"twinnet {__version__}", TAG_ENDPOINT: endpoint, **extra}
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def is_ours(tags: Mapping[str, str], endpoint: str) -> bool:
    """twinnet's ownership tags for ``endpoint``: the only resources deploy and teardown delete."""
    return TAG_MANAGED in tags and tags.get(TAG_ENDPOINT) == endpoint


def tag_dict(sm: Any, arn: str) -> dict[str, str]:
    """A SageMaker resource's tags as a dict."""
    out: dict[str, str] = {}
    for page in sm.get_paginator("list_tags").paginate(ResourceArn=arn):
        out.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
    return out


def check_managed(sm: Any, desc: dict[str, Any]) -> dict[str, str]:
    """The endpoint's tags; an error when twinnet did not create it (it is not ours to change)."""
    tags = tag_dict(sm, desc["EndpointArn"])
    if not is_ours(tags, desc["EndpointName"]):
        raise TwinnetError(
            f"endpoint {desc['EndpointName']!r} exists but was not created by twinnet; "
            "pick another --endpoint name"
        )
    return tags


def _absent_is_none(call: Any, **kwargs: Any) -> Any:
    """``call(**kwargs)``, or ``None`` when AWS says the resource does not exist."""
    from botocore.exceptions import ClientError

    try:
        return call(**kwargs)
    except ClientError as exc:
        if not_found(exc):
            return None
        raise


def describe_endpoint(sm: Any, name: str) -> dict[str, Any] | None:
    """DescribeEndpoint, or ``None`` when there is no such endpoint."""
    return _absent_is_none(sm.describe_endpoint, EndpointName=name)


def describe_endpoint_config(sm: Any, name: str) -> dict[str, Any] | None:
    """DescribeEndpointConfig, or ``None`` when there is no such config."""
    return _absent_is_none(sm.describe_endpoint_config, EndpointConfigName=name)


def variant_models(sm: Any, config_name: str) -> list[str]:
    """The models an endpoint config's variants run (none when the config is gone)."""
    config = describe_endpoint_config(sm, config_name) or {}
    return [v["ModelName"] for v in config.get("ProductionVariants", []) if v.get("ModelName")]


def model_data_url(sm: Any, model: str) -> str | None:
    """The ``s3://`` artifact a model runs, or ``None`` (no model, or no artifact)."""
    desc = _absent_is_none(sm.describe_model, ModelName=model) or {}
    return desc.get("PrimaryContainer", {}).get("ModelDataUrl")


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    """HeadObject: whether ``s3://bucket/key`` exists."""
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


@dataclass
class Owned:
    """Models and endpoint configs tagged for one endpoint (found by name prefix, checked by tag)."""

    configs: dict[str, dict[str, str]] = field(default_factory=dict)
    models: dict[str, dict[str, str]] = field(default_factory=dict)


def find_owned(sm: Any, endpoint: str) -> Owned:
    """Everything deploy created for ``endpoint``; the name filter keeps the tag look-ups few."""
    owned = Owned()
    base = base_name(endpoint)
    for page in sm.get_paginator("list_endpoint_configs").paginate(NameContains=base):
        for item in page.get("EndpointConfigs", []):
            tags = tag_dict(sm, item["EndpointConfigArn"])
            if is_ours(tags, endpoint):
                owned.configs[item["EndpointConfigName"]] = tags
    for page in sm.get_paginator("list_models").paginate(NameContains=base):
        for item in page.get("Models", []):
            tags = tag_dict(sm, item["ModelArn"])
            if is_ours(tags, endpoint):
                owned.models[item["ModelName"]] = tags
    return owned
