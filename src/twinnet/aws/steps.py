"""The rollout's steps: each creates one thing and records in the ledger how to undo it.

Model and endpoint config are named ``<endpoint>-<UTC timestamp>`` and tagged as
twinnet's; the artifact is uploaded only when its content-addressed key is absent; an
update suspends the variant's scaling and records how to restore it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from twinnet.aws.ledger import Kept, Ledger, Left, Reporter, quiet
from twinnet.aws.modes import ASYNC, SERVERLESS
from twinnet.aws.plan import Plan
from twinnet.aws.resources import (
    TAG_ARTIFACT,
    TAG_ARTIFACTS_PREFIX,
    TAG_DEPLOYMENT,
    VARIANT,
    object_exists,
    ownership_tags,
)
from twinnet.aws.scaling import (
    apply_scaling,
    drop_scaling,
    read_scaling,
    remove_scaling,
    restore_scaling,
)
from twinnet.aws.session import aws, client, one_line
from twinnet.container.package import package
from twinnet.errors import TwinnetError

__all__ = [
    "Clients",
    "create_endpoint",
    "create_model_and_config",
    "scale",
    "stamp",
    "update_endpoint",
    "upload",
    "wait_for",
    "wait_in_service",
]


@dataclass(frozen=True)
class Clients:
    """The AWS clients a deploy uses (CloudWatch: the alarm that wakes an async endpoint)."""

    sm: Any
    s3: Any
    aas: Any
    cw: Any

    @classmethod
    def of(cls, session: Any) -> Clients:
        return cls(
            client(session, "sagemaker"),
            client(session, "s3"),
            client(session, "application-autoscaling"),
            client(session, "cloudwatch"),
        )


def upload(s3: Any, plan: Plan, ledger: Ledger, report: Reporter) -> None:
    """The artifact: content-addressed, so an identical one is never uploaded twice."""
    with aws(f"check {plan.artifact}"):
        present = object_exists(s3, plan.bucket, plan.key)
    if present:
        report("step", f"artifact already uploaded: {plan.artifact}")
        return
    with tempfile.TemporaryDirectory(prefix="twinnet-package-") as tmp:
        report("step", f"packaging {plan.model_dir}")
        tarball = package(plan.model_dir, Path(tmp) / "model.tar.gz", **plan.options)
        report("step", f"uploading {tarball.stat().st_size / 1e6:.1f} MB to {plan.artifact}")
        with aws(f"upload {plan.artifact}"):
            s3.upload_file(str(tarball), plan.bucket, plan.key)
    ledger.add(
        f"S3 object {plan.artifact}",
        lambda: s3.delete_object(Bucket=plan.bucket, Key=plan.key),
        guarded=True,
    )


def create_model_and_config(
    sm: Any, plan: Plan, name: str, ledger: Ledger, report: Reporter
) -> None:
    """Model and endpoint config, both called ``name`` (the endpoint plus a UTC timestamp)."""
    container: dict[str, Any] = {"Image": plan.image, "ModelDataUrl": plan.artifact}
    if plan.env:
        container["Environment"] = dict(plan.env)
    model_tags = {TAG_ARTIFACT: plan.digest, TAG_ARTIFACTS_PREFIX: plan.artifacts_prefix}
    with aws(f"create model {name}"):
        sm.create_model(
            ModelName=name,
            ExecutionRoleArn=plan.role,
            PrimaryContainer=container,
            Tags=ownership_tags(plan.endpoint, **model_tags),
        )
    ledger.add(f"model {name}", lambda: sm.delete_model(ModelName=name), guarded=True)
    report("step", f"created model {name}")

    variant: dict[str, Any] = {"VariantName": VARIANT, "ModelName": name}
    extra: dict[str, Any] = {}
    if plan.mode == SERVERLESS and plan.serverless is not None:
        variant["ServerlessConfig"] = plan.serverless.variant()
        shape = f"serverless, {plan.serverless.memory_mb} MB, up to {plan.serverless.max_concurrency} at once"
    else:
        variant.update(
            InstanceType=plan.instance_type,
            InitialInstanceCount=plan.count,
            InitialVariantWeight=1.0,
        )
        shape = f"{plan.count} x {plan.instance_type}"
    if plan.mode == ASYNC and plan.async_output is not None:
        extra["AsyncInferenceConfig"] = plan.async_output.config()
        shape += f", async, answers to {plan.async_output.output}"
    with aws(f"create endpoint config {name}"):
        sm.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[variant],
            Tags=ownership_tags(plan.endpoint, **{TAG_DEPLOYMENT: plan.deployment}),
            **extra,
        )
    ledger.add(
        f"endpoint config {name}",
        lambda: sm.delete_endpoint_config(EndpointConfigName=name),
        guarded=True,
    )
    report("step", f"created endpoint config {name} ({shape})")


def create_endpoint(sm: Any, plan: Plan, name: str, ledger: Ledger, report: Reporter) -> None:
    endpoint = plan.endpoint
    with aws(f"create endpoint {endpoint}"):
        sm.create_endpoint(
            EndpointName=endpoint, EndpointConfigName=name, Tags=ownership_tags(endpoint)
        )
    ledger.add(f"endpoint {endpoint}", lambda: sm.delete_endpoint(EndpointName=endpoint))
    report("step", f"creating endpoint {endpoint}")


def update_endpoint(
    clients: Clients, plan: Plan, name: str, old_config: str, ledger: Ledger, report: Reporter
) -> None:
    """Switch the endpoint to ``name`` in place, scaling suspended around the update."""
    endpoint, aas = plan.endpoint, clients.aas
    cw = clients.cw
    with aws(f"read scaling of {endpoint}"):
        old_scaling = read_scaling(aas, endpoint, cw)
    if old_scaling is not None:
        # AWS refuses updates that change a scaled variant's instance type; deregistering
        # first (and restoring on failure) makes every update safe.
        with aws(f"suspend scaling of {endpoint}"):
            remove_scaling(aas, endpoint, old_scaling, cw)
        ledger.add(
            f"scaling of {endpoint} (to restore)",
            lambda: restore_scaling(aas, endpoint, old_scaling, cw),
        )
    with aws(f"update endpoint {endpoint}"):
        clients.sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=name)
    ledger.add(
        f"update of {endpoint} to {name}",
        lambda: _undo_update(clients.sm, endpoint, name, old_config),
    )
    report("step", f"updating endpoint {endpoint} to {name}")


def _undo_update(sm: Any, endpoint: str, new_config: str, old_config: str) -> None:
    """An accepted update is not recalled: the endpoint keeps the new deployment.

    Switching back would be a second update that can fail in its own right; keeping what
    the endpoint runs (the guarded ledger steps skip it) is always safe, and the next
    deploy finishes the job.
    """
    desc = sm.describe_endpoint(EndpointName=endpoint)
    running = desc.get("EndpointConfigName")
    if desc["EndpointStatus"] in ("Updating", "SystemUpdating"):
        raise Kept(
            f"{endpoint} is still updating to {new_config}: run deploy again once it is InService"
        )
    if running == new_config:
        raise Kept(f"{endpoint} now runs {new_config}: run deploy again to finish")
    if running != old_config:
        raise Left(f"{endpoint} runs {running}")


def wait_for(sm: Any, plan: Plan, name: str, report: Reporter) -> str:
    """Wait until the endpoint runs ``name`` InService; returns the status."""
    endpoint = plan.endpoint
    desc = wait_in_service(sm, endpoint, report, poll_s=plan.poll_s, timeout_s=plan.wait_timeout_s)
    status = desc["EndpointStatus"]
    if status != "InService" or desc.get("EndpointConfigName") != name:
        reason = one_line(desc.get("FailureReason") or f"status {status}")
        raise TwinnetError(
            f"endpoint {endpoint} did not come up ({reason}); see CloudWatch logs "
            f"/aws/sagemaker/Endpoints/{endpoint}"
        )
    return status


def scale(clients: Clients, plan: Plan, ledger: Ledger, report: Reporter) -> None:
    endpoint, a, aas, cw = plan.endpoint, plan.autoscale, clients.aas, clients.cw
    assert a is not None
    with aws(f"register autoscaling for {endpoint}"):
        apply_scaling(aas, endpoint, a, plan.mode, cw)
    ledger.add(f"autoscaling of {endpoint}", lambda: drop_scaling(aas, endpoint, cw))
    report("step", f"autoscaling {a.describe(plan.mode)}")


def stamp() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}"


def wait_in_service(
    sm: Any,
    endpoint: str,
    report: Reporter = quiet,
    poll_s: float = 15.0,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Poll ``describe_endpoint`` until it leaves Creating/Updating; returns the last description.

    Polling (rather than boto3's waiter) lets each poll report the status and elapsed time.
    """
    start = time.monotonic()
    while True:
        with aws(f"describe endpoint {endpoint}"):
            desc = sm.describe_endpoint(EndpointName=endpoint)
        status = desc["EndpointStatus"]
        elapsed = time.monotonic() - start
        report("wait", f"endpoint {endpoint}: {status} ({elapsed:.0f}s)")
        if status not in ("Creating", "Updating", "SystemUpdating"):
            return desc
        if elapsed > timeout_s:
            raise TwinnetError(
                f"endpoint {endpoint} still {status} after {timeout_s:.0f}s; "
                "check its CloudWatch logs (/aws/sagemaker/Endpoints/" + endpoint + ")"
            )
        time.sleep(poll_s)
