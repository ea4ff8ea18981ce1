"""Which twinnet endpoints a region has, and whether one can answer now.

The listing finds twinnet's endpoints with one Resource Groups Tagging API query (by the
``twinnet:managed-by`` tag) instead of asking for the tags of every endpoint in the region,
so other teams' endpoints cost nothing. DescribeEndpoint (live instance count, current
config) and DescribeEndpointConfig (instance type, model) are then read for twinnet's only:
no single call returns both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from twinnet.aws.modes import ASYNC, SERVERLESS, endpoint_mode
from twinnet.aws.resources import (
    TAG_ENDPOINT,
    TAG_MANAGED,
    describe_endpoint,
    describe_endpoint_config,
)
from twinnet.aws.session import ACCESS_DENIED_CODES, aws, client, error_code, open_session
from twinnet.errors import TwinnetError

__all__ = [
    "EndpointInfo",
    "Facts",
    "backlog",
    "list_endpoints",
    "missing_endpoint",
    "not_in_service",
    "require_in_service",
]


def missing_endpoint(endpoint: str, region: str | None) -> str:
    """The message for an endpoint that does not exist."""
    return (
        f"endpoint {endpoint!r} not found in region {region}; check the name and the region "
        "(`twinnet endpoints` lists the twinnet endpoints there)"
    )


def not_in_service(endpoint: str, state: str) -> str:
    """The message for an endpoint that cannot answer yet (``state``: its status, or AWS's words)."""
    return (
        f"endpoint {endpoint!r} is not in service ({state}); wait until it is InService "
        "(`twinnet endpoints` shows its status), or deploy it again if it Failed"
    )


@dataclass(frozen=True)
class Facts:
    """What a client needs to know of an endpoint: its mode, and where an async one answers."""

    mode: str = "realtime"
    #: An async endpoint's ``S3OutputPath``.
    output: str | None = None


def require_in_service(sm: Any, endpoint: str, region: str | None) -> Facts:
    """Fail early, in one line, when the endpoint is missing or not serving yet; its facts.

    Credentials allowed to invoke but not to describe endpoints skip the check
    (AccessDenied) and are taken as real-time: the invocation's own error then speaks.
    """
    from botocore.exceptions import ClientError

    with aws(f"describe endpoint {endpoint}"):
        try:
            desc = describe_endpoint(sm, endpoint)
            if desc is None:
                raise TwinnetError(missing_endpoint(endpoint, region))
            if desc["EndpointStatus"] != "InService":
                raise TwinnetError(not_in_service(endpoint, desc["EndpointStatus"]))
            config = describe_endpoint_config(sm, desc["EndpointConfigName"]) or {}
        except ClientError as exc:
            if error_code(exc) in ACCESS_DENIED_CODES:
                return Facts()
            raise
    output = (config.get("AsyncInferenceConfig") or {}).get("OutputConfig", {}).get("S3OutputPath")
    return Facts(endpoint_mode(config), output)


@dataclass
class EndpointInfo:
    """One twinnet endpoint, as ``twinnet endpoints`` lists it.

    ``instance_type`` is ``serverless <MB> MB`` for a serverless endpoint; ``backlog`` is an
    async endpoint's queued requests (CloudWatch ``ApproximateBacklogSize``, the latest
    minute of the last 15), ``None`` when not async or not yet reported.
    """

    name: str
    status: str
    instance_type: str
    instances: int | None
    model: str
    modified: str
    mode: str = "realtime"
    backlog: float | None = None


def list_endpoints(
    session: Any = None, region: str | None = None, profile: str | None = None
) -> list[EndpointInfo]:
    """Every endpoint in the region tagged as created by twinnet, oldest first.

    Args:
        session: a boto3 session; by default one is opened from ``region`` and ``profile``.
    """
    session = session or open_session(region=region, profile=profile)
    sm = client(session, "sagemaker")
    rows: list[tuple[Any, EndpointInfo]] = []
    with aws("list endpoints"):
        for name in _tagged_endpoints(client(session, "resourcegroupstaggingapi")):
            desc = describe_endpoint(sm, name)
            if desc is not None:  # the tagging index may still hold a deleted endpoint
                rows.append((desc.get("CreationTime"), _info(sm, desc)))
    asynchronous = [info for _, info in rows if info.mode == ASYNC]
    if asynchronous:
        cw = client(session, "cloudwatch")
        for info in asynchronous:
            info.backlog = backlog(cw, info.name)
    rows.sort(key=lambda row: (_seconds(row[0]), row[1].name))
    return [info for _, info in rows]


def _tagged_endpoints(tagging: Any) -> list[str]:
    """Names of the region's SageMaker endpoints that carry twinnet's ``managed-by`` tag.

    The name is read from the ``twinnet:endpoint`` tag, since ARNs spell names in lower case.
    """
    names = []
    pages = tagging.get_paginator("get_resources").paginate(
        TagFilters=[{"Key": TAG_MANAGED}], ResourceTypeFilters=["sagemaker:endpoint"]
    )
    for page in pages:
        for item in page.get("ResourceTagMappingList", []):
            tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
            names.append(tags.get(TAG_ENDPOINT) or item["ResourceARN"].rsplit("/", 1)[-1])
    return names


def backlog(cw: Any, endpoint: str, minutes: int = 15) -> float | None:
    """An async endpoint's latest ``ApproximateBacklogSize``; ``None`` when none is reported.

    A failure to read it (e.g. no ``cloudwatch:GetMetricStatistics`` permission) is not
    the listing's failure: the column stays empty.
    """
    now = datetime.now(timezone.utc)
    try:
        points = cw.get_metric_statistics(
            Namespace="AWS/SageMaker",
            MetricName="ApproximateBacklogSize",
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}],
            StartTime=now - timedelta(minutes=minutes),
            EndTime=now + timedelta(minutes=1),  # the minute in progress too
            Period=60,
            Statistics=["Maximum"],
        ).get("Datapoints", [])
    except Exception:  # noqa: BLE001 - an optional column
        return None
    if not points:
        return None
    latest = max(points, key=lambda p: _seconds(p.get("Timestamp")))
    return float(latest["Maximum"])


def _info(sm: Any, desc: dict[str, Any]) -> EndpointInfo:
    variant = next(iter(desc.get("ProductionVariants") or []), {})
    config = describe_endpoint_config(sm, desc["EndpointConfigName"]) or {}
    pv = next(iter(config.get("ProductionVariants") or []), {})
    mode = endpoint_mode(config)
    kind = pv.get("InstanceType", "")
    if mode == SERVERLESS:
        kind = f"serverless {pv['ServerlessConfig'].get('MemorySizeInMB', '?')} MB"
    return EndpointInfo(
        name=desc["EndpointName"],
        status=desc["EndpointStatus"],
        instance_type=kind,
        instances=variant.get("CurrentInstanceCount"),
        model=pv.get("ModelName", ""),
        modified=_utc(desc.get("LastModifiedTime")),
        mode=mode,
    )


def _seconds(when: Any) -> float:
    return when.timestamp() if isinstance(when, datetime) else 0.0


def _utc(when: Any) -> str:
    """botocore gives local-time datetimes; the listing shows UTC."""
    if not isinstance(when, datetime):
        return str(when or "")
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M")
