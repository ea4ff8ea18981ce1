"""Autoscaling of an endpoint's variant, by mode.

- Real-time: target tracking on invocations per instance (per minute), at least 1 instance.
- Asynchronous: target tracking on the queue's backlog per instance
  (``ApproximateBacklogSizePerInstance``), and down to 0 instances. Target tracking cannot
  wake a variant that has no instance, so with a minimum of 0 a step policy adds one
  instance when the CloudWatch alarm on ``HasBacklogWithoutCapacity`` fires: the set-up
  AWS documents for scaling asynchronous endpoints to zero.

Deploy registers the variant and its policies, suspends them around an update (AWS refuses
updates that change a scaled variant's instance type) and restores them on failure;
teardown removes them. The calls, and the order of removal (the alarm that points at a
policy, then the policies, then the target), are written once here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from twinnet.aws.modes import ASYNC, REALTIME
from twinnet.aws.resources import VARIANT
from twinnet.aws.session import ACCESS_DENIED_CODES, error_code
from twinnet.errors import TwinnetError

__all__ = [
    "BACKLOG_METRIC",
    "DEFAULT_TARGET",
    "NO_CAPACITY_METRIC",
    "SCALABLE_DIMENSION",
    "SCALING_METRIC",
    "Autoscale",
    "Scaling",
    "alarm_name",
    "apply_scaling",
    "drop_scaling",
    "parse_autoscale",
    "read_scaling",
    "remove_scaling",
    "removal_steps",
    "resource_id",
    "restore_scaling",
]

SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"
#: Asynchronous endpoints: requests queued per instance, and "queued with no instance".
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
NO_CAPACITY_METRIC = "HasBacklogWithoutCapacity"
#: The default targets: invocations per instance per minute, and queued requests per instance.
DEFAULT_TARGET = {REALTIME: 70.0, ASYNC: 5.0}


@dataclass(frozen=True)
class Autoscale:
    """Target tracking between two instance counts.

    ``target`` is invocations per instance per minute on a real-time endpoint and queued
    requests per instance on an asynchronous one; ``None`` takes :data:`DEFAULT_TARGET`.
    Only an asynchronous endpoint may scale to 0 instances (checked with the mode).
    """

    min_capacity: int
    max_capacity: int
    target: float | None = None

    def __post_init__(self) -> None:
        if self.min_capacity < 0:
            raise TwinnetError("--autoscale: the minimum instance count must not be negative")
        if self.max_capacity < max(1, self.min_capacity):
            raise TwinnetError("--autoscale: MAX must be at least MIN, and at least 1")
        if self.target is not None and not self.target > 0:
            raise TwinnetError("--autoscale: TARGET must be a positive number")

    def target_for(self, mode: str) -> float:
        """The target value for an endpoint of ``mode``."""
        return float(self.target if self.target is not None else DEFAULT_TARGET[mode])

    def describe(self, mode: str) -> str:
        unit = "queued requests/instance" if mode == ASYNC else "invocations/instance/minute"
        return (
            f"{self.min_capacity}-{self.max_capacity} instances at {self.target_for(mode):g} {unit}"
        )


def parse_autoscale(text: str) -> Autoscale:
    """Parse ``MIN:MAX[:TARGET]`` (e.g. ``1:4``, ``1:4:200``, or ``0:4`` for async)."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 3):
        raise TwinnetError(f"--autoscale expects MIN:MAX[:TARGET], got {text!r}")
    try:
        low, high = int(parts[0]), int(parts[1])
        target = float(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise TwinnetError(
            f"--autoscale expects whole instance counts and a number, got {text!r}"
        ) from None
    if target is not None and (target != target or target in (float("inf"), float("-inf"))):
        raise TwinnetError(f"--autoscale: TARGET must be finite, got {text!r}")
    return Autoscale(low, high, target)


def resource_id(endpoint: str) -> str:
    """Application Auto Scaling's name for the endpoint's variant."""
    return f"endpoint/{endpoint}/variant/{VARIANT}"


def _policy_name(endpoint: str, mode: str = REALTIME) -> str:
    return f"twinnet-{endpoint}-{'backlog' if mode == ASYNC else 'invocations'}"


def _wake_policy_name(endpoint: str) -> str:
    return f"twinnet-{endpoint}-from-zero"


def alarm_name(endpoint: str) -> str:
    """The CloudWatch alarm that wakes an asynchronous endpoint scaled to zero."""
    return f"twinnet-{endpoint}-backlog-without-capacity"


def _target(endpoint: str) -> dict[str, str]:
    """The keyword arguments that name the variant's scalable target in every call."""
    return {
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource_id(endpoint),
        "ScalableDimension": SCALABLE_DIMENSION,
    }


@dataclass
class Scaling:
    """A variant's scaling target, policies and wake-up alarm, as read back, to be restored.

    ``min_capacity`` is ``None`` when only an alarm was left (no target registered).
    """

    min_capacity: int | None
    max_capacity: int | None
    policies: list[dict[str, Any]]
    alarms: list[str] = field(default_factory=list)


def read_scaling(aas: Any, endpoint: str, cw: Any = None) -> Scaling | None:
    """The variant's current scaling, or ``None`` when nothing of it exists.

    ``cw`` (a CloudWatch client) also finds twinnet's wake-up alarm for the endpoint.
    """
    target = _target(endpoint)
    targets = aas.describe_scalable_targets(
        ServiceNamespace="sagemaker",
        ResourceIds=[target["ResourceId"]],
        ScalableDimension=SCALABLE_DIMENSION,
    ).get("ScalableTargets", [])
    alarms = _alarms(cw, endpoint)
    if not targets:
        return Scaling(None, None, [], alarms) if alarms else None
    policies = aas.describe_scaling_policies(**target).get("ScalingPolicies", [])
    return Scaling(targets[0]["MinCapacity"], targets[0]["MaxCapacity"], policies, alarms)


def _alarms(cw: Any, endpoint: str) -> list[str]:
    """twinnet's wake-up alarm for the endpoint, if it exists. Without permission to look
    (only async endpoints scaled to zero have one) the answer is none."""
    if cw is None:
        return []
    from botocore.exceptions import ClientError

    try:
        found = cw.describe_alarms(AlarmNames=[alarm_name(endpoint)]).get("MetricAlarms", [])
    except ClientError as exc:
        if error_code(exc) in ACCESS_DENIED_CODES:
            return []
        raise
    return [a["AlarmName"] for a in found]


def removal_steps(
    aas: Any, endpoint: str, scaling: Scaling, cw: Any = None
) -> list[tuple[str, Callable[[], Any]]]:
    """The calls that remove ``scaling``, named, in order: the alarm, the policies, the target."""
    target = _target(endpoint)
    steps: list[tuple[str, Callable[[], Any]]] = [
        (f"CloudWatch alarm {name}", partial(cw.delete_alarms, AlarmNames=[name]))
        for name in scaling.alarms
        if cw is not None
    ]
    steps += [
        (
            f"scaling policy {policy['PolicyName']}",
            partial(aas.delete_scaling_policy, PolicyName=policy["PolicyName"], **target),
        )
        for policy in scaling.policies
    ]
    if scaling.min_capacity is not None:
        steps.append(
            (
                f"scalable target {target['ResourceId']}",
                partial(aas.deregister_scalable_target, **target),
            )
        )
    return steps


def remove_scaling(aas: Any, endpoint: str, scaling: Scaling, cw: Any = None) -> list[str]:
    """Remove ``scaling``, stopping at the first failure; returns what was removed."""
    removed = []
    for what, call in removal_steps(aas, endpoint, scaling, cw):
        call()
        removed.append(what)
    return removed


def drop_scaling(aas: Any, endpoint: str, cw: Any = None) -> None:
    """Remove whatever scaling the variant has now (none is fine)."""
    scaling = read_scaling(aas, endpoint, cw)
    if scaling is not None:
        remove_scaling(aas, endpoint, scaling, cw)


def _register(aas: Any, endpoint: str, min_capacity: int, max_capacity: int) -> None:
    aas.register_scalable_target(
        **_target(endpoint), MinCapacity=min_capacity, MaxCapacity=max_capacity
    )


def restore_scaling(aas: Any, endpoint: str, scaling: Scaling, cw: Any = None) -> None:
    """Put back a scaling read earlier with :func:`read_scaling`."""
    if scaling.min_capacity is not None and scaling.max_capacity is not None:
        _register(aas, endpoint, scaling.min_capacity, scaling.max_capacity)
    arns = {}
    for policy in scaling.policies:
        kwargs: dict[str, Any] = {"PolicyName": policy["PolicyName"], **_target(endpoint)}
        kwargs["PolicyType"] = policy["PolicyType"]
        for key in ("TargetTrackingScalingPolicyConfiguration", "StepScalingPolicyConfiguration"):
            if policy.get(key):
                kwargs[key] = policy[key]
        arns[policy["PolicyName"]] = aas.put_scaling_policy(**kwargs).get("PolicyARN", "")
    wake = arns.get(_wake_policy_name(endpoint))
    if scaling.alarms and cw is not None and wake:
        _put_alarm(cw, endpoint, wake)


def apply_scaling(
    aas: Any, endpoint: str, autoscale: Autoscale, mode: str = REALTIME, cw: Any = None
) -> None:
    """Register the variant and attach its policies (every call is an upsert).

    Real-time: one target-tracking policy on invocations per instance. Asynchronous: one on
    the backlog per instance and, with a minimum of 0, the step policy and alarm that wake
    the variant when requests wait with no instance (``cw``: a CloudWatch client).
    """
    _register(aas, endpoint, autoscale.min_capacity, autoscale.max_capacity)
    if mode == ASYNC:
        metric: dict[str, Any] = {
            "CustomizedMetricSpecification": {
                "MetricName": BACKLOG_METRIC,
                "Namespace": "AWS/SageMaker",
                "Dimensions": [{"Name": "EndpointName", "Value": endpoint}],
                "Statistic": "Average",
            }
        }
    else:
        metric = {"PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC}}
    aas.put_scaling_policy(
        PolicyName=_policy_name(endpoint, mode),
        **_target(endpoint),
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": autoscale.target_for(mode),
            **metric,
            "ScaleInCooldown": 300,
            "ScaleOutCooldown": 60,
        },
    )
    if mode == ASYNC and autoscale.min_capacity == 0:
        if cw is None:
            raise TwinnetError("scaling an asynchronous endpoint to zero needs a CloudWatch client")
        wake = aas.put_scaling_policy(
            PolicyName=_wake_policy_name(endpoint),
            **_target(endpoint),
            PolicyType="StepScaling",
            StepScalingPolicyConfiguration={
                "AdjustmentType": "ChangeInCapacity",
                "MetricAggregationType": "Average",
                "Cooldown": 300,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
            },
        )
        _put_alarm(cw, endpoint, wake["PolicyARN"])
    elif mode == ASYNC:
        _drop_wake(aas, endpoint, cw)


def _drop_wake(aas: Any, endpoint: str, cw: Any) -> None:
    """A minimum above 0 needs no wake-up: remove the alarm and step policy of an earlier 0:N."""
    if _alarms(cw, endpoint):
        cw.delete_alarms(AlarmNames=[alarm_name(endpoint)])
    policies = aas.describe_scaling_policies(**_target(endpoint)).get("ScalingPolicies", [])
    if any(p["PolicyName"] == _wake_policy_name(endpoint) for p in policies):
        aas.delete_scaling_policy(PolicyName=_wake_policy_name(endpoint), **_target(endpoint))


def _put_alarm(cw: Any, endpoint: str, policy_arn: str) -> None:
    """The alarm that runs the wake-up policy while requests wait and no instance runs."""
    cw.put_metric_alarm(
        AlarmName=alarm_name(endpoint),
        AlarmDescription=f"twinnet: wake {endpoint} (scaled to zero) when requests are queued",
        Namespace="AWS/SageMaker",
        MetricName=NO_CAPACITY_METRIC,
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}],
        Statistic="Average",
        Period=60,
        EvaluationPeriods=2,
        DatapointsToAlarm=2,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing",
        AlarmActions=[policy_arn],
    )
