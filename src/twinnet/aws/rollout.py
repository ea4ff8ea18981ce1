"""``deploy``: make an endpoint serve a model directory, declaratively and safely.

- ``deploy`` checks every argument, then builds one frozen :class:`Plan` (digest, S3 key,
  deployment hash, prefix...) that the rollout only reads.
- The same inputs against an endpoint already serving them change nothing; new inputs
  create a new model and config and update the endpoint in place, then delete the
  superseded ones. Artifacts are stored under a content-addressed key, so re-uploading the
  same model writes nothing new.
- Every step that creates something records its undo in a :class:`~.ledger.Ledger`. A
  failure (or Ctrl-C) half way undoes this run's steps in reverse; the error says what was
  rolled back, what the live endpoint keeps running on, and what is left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinnet.aws.fit import check_image, check_serverless
from twinnet.aws.ledger import Ledger, Reporter, in_use, quiet, rollback_message
from twinnet.aws.modes import REALTIME, SERVERLESS, AsyncOutput, Serverless, endpoint_mode
from twinnet.aws.plan import Plan, artifact_digest, check_arguments, check_target
from twinnet.aws.resources import (
    DEFAULT_INSTANCE_TYPE,
    TAG_DEPLOYMENT,
    Owned,
    base_name,
    describe_endpoint_config,
    find_owned,
    variant_models,
)
from twinnet.aws.scaling import Autoscale, apply_scaling, read_scaling, remove_scaling
from twinnet.aws.session import aws, describe_error, open_session
from twinnet.aws.steps import (
    Clients,
    create_endpoint,
    create_model_and_config,
    scale,
    stamp,
    update_endpoint,
    upload,
    wait_for,
)
from twinnet.errors import TwinnetError

__all__ = ["DeployResult", "deploy"]


@dataclass
class DeployResult:
    """What ``deploy`` did.

    Attributes:
        endpoint: the endpoint name.
        region: the endpoint's AWS region.
        action: ``created``, ``updated`` or ``unchanged``.
        mode: ``realtime``, ``serverless`` or ``async``.
        status: the endpoint's status when ``deploy`` returned.
        model: the SageMaker model now behind the endpoint.
        endpoint_config: the endpoint config now behind the endpoint.
        artifact: the ``s3://`` URI of ``model.tar.gz``.
        autoscale: the scaling applied, if any.
        removed: superseded resources deleted after an update.
    """

    endpoint: str
    region: str
    action: str
    status: str
    model: str
    endpoint_config: str
    artifact: str
    autoscale: Autoscale | None = None
    removed: list[str] = field(default_factory=list)
    mode: str = REALTIME


def deploy(
    model_dir: str | Path, endpoint: str, bucket: str, role: str, image: str,
    instance_type: str = DEFAULT_INSTANCE_TYPE, count: int | None = None,
    autoscale: Autoscale | None = None, wait: bool = False, prefix: str = "twinnet",
    env: Mapping[str, str] | None = None, session: Any = None, region: str | None = None,
    profile: str | None = None, report: Reporter = quiet, poll_s: float = 15.0,
    wait_timeout_s: float = 3600.0, package_options: Mapping[str, Any] | None = None,
    mode: str = REALTIME, serverless: Serverless | None = None,
    async_output: AsyncOutput | None = None,
) -> DeployResult:  # fmt: skip
    """Make ``endpoint`` serve ``model_dir``: package, upload, create or update, scale.

    Args:
        model_dir: a twinnet model directory.
        endpoint: the endpoint name; created if absent, updated in place if present.
        bucket: S3 bucket for ``model.tar.gz`` (must exist).
        role: IAM role SageMaker assumes to pull the image and read the artifact.
        image: serving image URI (an ECR repository in the endpoint's region).
        instance_type: SageMaker hosting instance type.
        count: initial instance count; defaults to 1, or to the autoscale minimum.
        autoscale: scale between two counts on invocations per instance; ``None`` removes
            any scaling an earlier deploy set up.
        wait: wait until the endpoint is InService (implied by ``autoscale``, since a
            variant can only be registered for scaling once it exists).
        prefix: S3 key prefix; artifacts go to ``<prefix>/<endpoint>/<digest>/model.tar.gz``.
        env: extra environment variables for the container (e.g. ``TWINNET_WORKERS``).
        session: a boto3 session; by default one is opened from ``region`` and ``profile``
            once the arguments have been checked.
        report: progress callback ``report(event, message)``.
        poll_s, wait_timeout_s: seconds between status polls while waiting, and before giving
            up waiting (and rolling back).
        package_options: keyword arguments for :func:`twinnet.container.package.package`.
        mode: ``realtime`` (instances), ``serverless`` (per request; ``serverless`` sizes it,
            and the model is measured against it before anything is created) or ``async``
            (requests and answers in S3; ``async_output`` says where, and ``autoscale`` may
            start at 0). An endpoint keeps its mode: changing it needs a teardown first.

    Raises:
        TwinnetError: bad arguments, missing credentials/bucket, or a failed step (after
            rolling back what this run created; the message lists anything left). If the
            endpoint already runs this run's new config when the failure comes, that config,
            its model and its artifact are kept and listed as KEPT, not deleted.
    """
    count, env = check_arguments(
        model_dir, endpoint, role, image, instance_type, count, autoscale, env or {}, mode,
        async_output,
    )  # fmt: skip
    options = dict(package_options or {})
    if mode == SERVERLESS:
        serverless = serverless or Serverless()
        fit = check_serverless(model_dir, serverless, options, env, report)
    session = session or open_session(region=region, profile=profile)
    clients = Clients.of(session)
    existing = check_target(clients.sm, clients.s3, endpoint, bucket)
    if existing is not None:
        _check_same_mode(clients.sm, existing, mode)
    if mode == SERVERLESS:
        check_image(session, image, fit.archive_bytes, report)
    plan = Plan(
        model_dir=Path(model_dir), endpoint=endpoint, region=session.region_name, bucket=bucket,
        prefix=prefix.strip("/"), role=role, image=image, instance_type=instance_type,
        count=count, autoscale=autoscale, wait=wait or autoscale is not None, env=env,
        options=options, digest=artifact_digest(model_dir, options), poll_s=poll_s,
        wait_timeout_s=wait_timeout_s, mode=mode,
        serverless=serverless if mode == SERVERLESS else None, async_output=async_output,
    )  # fmt: skip
    return _reconcile(clients, plan, existing, report)


def _check_same_mode(sm: Any, existing: dict[str, Any], mode: str) -> None:
    """SageMaker does not move an endpoint between modes in place: say so before any change."""
    with aws(f"describe endpoint config {existing['EndpointConfigName']}"):
        running = endpoint_mode(describe_endpoint_config(sm, existing["EndpointConfigName"]))
    if running != mode:
        name = existing["EndpointName"]
        raise TwinnetError(
            f"endpoint {name} runs in {running} mode; SageMaker does not switch an endpoint "
            f"to {mode} in place: remove it with `twinnet teardown {name}` and deploy again, "
            "or deploy under another --endpoint name"
        )


def _reconcile(
    clients: Clients, plan: Plan, existing: dict[str, Any] | None, report: Reporter
) -> DeployResult:
    """Clear what a crashed run left, then change nothing (same deployment) or roll out."""
    with aws(f"list resources of endpoint {plan.endpoint}"):
        owned = find_owned(clients.sm, plan.endpoint)
    if existing is None and (owned.configs or owned.models):
        # Without an endpoint nothing uses them: what an earlier, crashed run left behind.
        _prune(clients.sm, plan.endpoint, None, [], owned, report)
        owned = Owned()
    if existing is not None:
        running = owned.configs.get(existing["EndpointConfigName"], {})
        if running.get(TAG_DEPLOYMENT) == plan.deployment:
            return _unchanged(clients, plan, existing, owned, report)
    ledger = Ledger(report, lambda pending: in_use(clients.sm, plan.endpoint, pending))
    try:
        result = _roll_out(clients, plan, existing, owned, ledger, report)
    except BaseException as exc:
        if not ledger:
            raise
        cause = _cause(exc)
        report("rollback", f"deploy failed ({cause}); rolling back")
        outcome = ledger.rollback()
        raise TwinnetError(rollback_message(plan.endpoint, plan.region, cause, outcome)) from None
    ledger.commit()
    return result


def _cause(exc: BaseException) -> str:
    if isinstance(exc, TwinnetError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return describe_error("deploy", exc)


def _unchanged(
    clients: Clients, plan: Plan, existing: dict[str, Any], owned: Owned, report: Reporter
) -> DeployResult:
    """Same inputs as the running deployment: reconcile scaling, prune leftovers, change nothing else."""
    endpoint, config = plan.endpoint, existing["EndpointConfigName"]
    with aws(f"describe endpoint config {config}"):
        models = variant_models(clients.sm, config)
    report("step", f"endpoint {endpoint} already serves this model with these settings")
    with aws(f"update scaling of {endpoint}"):
        if plan.autoscale is not None:
            apply_scaling(clients.aas, endpoint, plan.autoscale, plan.mode, clients.cw)
            report("step", f"autoscaling {plan.autoscale.describe(plan.mode)}")
        else:
            scaling = read_scaling(clients.aas, endpoint, clients.cw)
            if scaling is not None:
                for what in remove_scaling(clients.aas, endpoint, scaling, clients.cw):
                    report("step", f"removed {what}")
    removed = _prune(clients.sm, endpoint, config, models, owned, report)
    return DeployResult(
        endpoint=endpoint,
        region=plan.region,
        action="unchanged",
        status=existing["EndpointStatus"],
        model=models[0] if models else "",
        endpoint_config=config,
        artifact=plan.artifact,
        autoscale=plan.autoscale,
        removed=removed,
        mode=plan.mode,
    )


def _prune(
    sm: Any,
    endpoint: str,
    keep_config: str | None,
    keep_models: list[str],
    owned: Owned,
    report: Reporter,
) -> list[str]:
    """Delete this endpoint's configs and models that nothing uses any more."""
    removed = []
    with aws(f"remove superseded resources of {endpoint}"):
        for name in owned.configs:
            if name != keep_config:
                sm.delete_endpoint_config(EndpointConfigName=name)
                removed.append(f"endpoint config {name}")
        for name in owned.models:
            if name not in keep_models:
                sm.delete_model(ModelName=name)
                removed.append(f"model {name}")
    for what in removed:
        report("step", f"removed superseded {what}")
    return removed


def _roll_out(
    clients: Clients,
    plan: Plan,
    existing: dict[str, Any] | None,
    owned: Owned,
    ledger: Ledger,
    report: Reporter,
) -> DeployResult:
    """The steps that create things, each recorded in ``ledger`` with its undo."""
    upload(clients.s3, plan, ledger, report)
    name = f"{base_name(plan.endpoint)}-{stamp()}"
    create_model_and_config(clients.sm, plan, name, ledger, report)
    if existing is None:
        create_endpoint(clients.sm, plan, name, ledger, report)
        action, status = "created", "Creating"
    else:
        update_endpoint(clients, plan, name, existing["EndpointConfigName"], ledger, report)
        action, status = "updated", "Updating"
    removed: list[str] = []
    if plan.wait:
        status = wait_for(clients.sm, plan, name, report)
        if plan.autoscale is not None:
            scale(clients, plan, ledger, report)
        if action == "updated":
            removed = _prune(clients.sm, plan.endpoint, name, [name], owned, report)
    return DeployResult(
        endpoint=plan.endpoint,
        region=plan.region,
        action=action,
        status=status,
        model=name,
        endpoint_config=name,
        artifact=plan.artifact,
        autoscale=plan.autoscale if plan.wait else None,
        removed=removed,
        mode=plan.mode,
    )
