"""Autoscaling of an endpoint's variant: target tracking on invocations per instance.

Deploy registers the variant and one policy, suspends them around an update (AWS refuses
updates that change a scaled variant's instance type) and restores them on failure;
teardown removes them. The calls, and the order AWS documents for removing them (policies
first, then the target), are written once here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from twinnet.aws.resources import VARIANT
from twinnet.errors import TwinnetError

__all__ = [
    "SCALABLE_DIMENSION",
    "SCALING_METRIC",
    "Autoscale",
    "Scaling",
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


@dataclass(frozen=True)
class Autoscale:
    """Target tracking on invocations per instance (per minute), between two instance counts."""

    min_capacity: int
    max_capacity: int
    target: float = 70.0

    def __post_init__(self) -> None:
        if self.min_capacity < 1:
            raise TwinnetError("--autoscale: the minimum instance count must be at least 1")
        if self.max_capacity < self.min_capacity:
            raise TwinnetError("--autoscale: MAX must be at least MIN")
        if not self.target > 0:
            raise TwinnetError("--autoscale: TARGET_INVOCATIONS must be a positive number")


def parse_autoscale(text: str) -> Autoscale:
    """Parse ``MIN:MAX[:TARGET_INVOCATIONS]`` (e.g. ``1:4`` or ``1:4:200``)."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 3):
        raise TwinnetError(f"--autoscale expects MIN:MAX[:TARGET_INVOCATIONS], got {text!r}")
    try:
        low, high = int(parts[0]), int(parts[1])
        target = float(parts[2]) if len(parts) == 3 else 70.0
    except ValueError:
        raise TwinnetError(
            f"--autoscale expects whole instance counts and a number, got {text!r}"
        ) from None
    if target != target or target in (float("inf"), float("-inf")):
        raise TwinnetError(f"--autoscale: TARGET_INVOCATIONS must be finite, got {text!r}")
    return Autoscale(low, high, target)


def resource_id(endpoint: str) -> str:
    """Application Auto Scaling's name for the endpoint's variant."""
    return f"endpoint/{endpoint}/variant/{VARIANT}"


def _policy_name(endpoint: str) -> str:
    return f"twinnet-{endpoint}-invocations"


def _target(endpoint: str) -> dict[str, str]:
    """The keyword arguments that name the variant's scalable target in every call."""
    return {
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource_id(endpoint),
        "ScalableDimension": SCALABLE_DIMENSION,
    }


@dataclass
class Scaling:
    """A variant's scaling target and policies, as read back, so they can be restored."""

    min_capacity: int
    max_capacity: int
    policies: list[dict[str, Any]]


def read_scaling(aas: Any, endpoint: str) -> Scaling | None:
    """The variant's current scaling, or ``None`` when it is not registered."""
    target = _target(endpoint)
    targets = aas.describe_scalable_targets(
        ServiceNamespace="sagemaker",
        ResourceIds=[target["ResourceId"]],
        ScalableDimension=SCALABLE_DIMENSION,
    ).get("ScalableTargets", [])
    if not targets:
        return None
    policies = aas.describe_scaling_policies(**target).get("ScalingPolicies", [])
    return Scaling(targets[0]["MinCapacity"], targets[0]["MaxCapacity"], policies)


def removal_steps(aas: Any, endpoint: str, scaling: Scaling) -> list[tuple[str, Callable[[], Any]]]:
    """The calls that remove ``scaling``, named, in AWS's order: the policies, then the target."""
    target = _target(endpoint)
    steps: list[tuple[str, Callable[[], Any]]] = [
        (
            f"scaling policy {policy['PolicyName']}",
            partial(aas.delete_scaling_policy, PolicyName=policy["PolicyName"], **target),
        )
        for policy in scaling.policies
    ]
    steps.append(
        (
            f"scalable target {target['ResourceId']}",
            partial(aas.deregister_scalable_target, **target),
        )
    )
    return steps


def remove_scaling(aas: Any, endpoint: str, scaling: Scaling) -> list[str]:
    """Remove ``scaling``, stopping at the first failure; returns what was removed."""
    removed = []
    for what, call in removal_steps(aas, endpoint, scaling):
        call()
        removed.append(what)
    return removed


def drop_scaling(aas: Any, endpoint: str) -> None:
    """Remove whatever scaling the variant has now (none is fine)."""
    scaling = read_scaling(aas, endpoint)
    if scaling is not None:
        remove_scaling(aas, endpoint, scaling)


def _register(aas: Any, endpoint: str, min_capacity: int, max_capacity: int) -> None:
    aas.register_scalable_target(
        **_target(endpoint), MinCapacity=min_capacity, MaxCapacity=max_capacity
    )


def restore_scaling(aas: Any, endpoint: str, scaling: Scaling) -> None:
    """Put back a scaling read earlier with :func:`read_scaling`."""
    _register(aas, endpoint, scaling.min_capacity, scaling.max_capacity)
    for policy in scaling.policies:
        kwargs: dict[str, Any] = {"PolicyName": policy["PolicyName"], **_target(endpoint)}
        kwargs["PolicyType"] = policy["PolicyType"]
        for key in ("TargetTrackingScalingPolicyConfiguration", "StepScalingPolicyConfiguration"):
            if policy.get(key):
                kwargs[key] = policy[key]
        aas.put_scaling_policy(**kwargs)


def apply_scaling(aas: Any, endpoint: str, autoscale: Autoscale) -> None:
    """Register the variant and attach one target-tracking policy (both calls are upserts)."""
    _register(aas, endpoint, autoscale.min_capacity, autoscale.max_capacity)
    aas.put_scaling_policy(
        PolicyName=_policy_name(endpoint),
        **_target(endpoint),
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(autoscale.target),
            "PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC},
            "ScaleInCooldown": 300,
            "ScaleOutCooldown": 60,
        },
    )
