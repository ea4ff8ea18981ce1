"""Deploy, list and tear down SageMaker real-time endpoints with boto3.

The calls are the ones AWS documents; nothing here knows whether it talks to AWS or to a
moto server, because boto3 itself honours ``AWS_ENDPOINT_URL``, the standard credential
variables and profiles.

Why it is shaped this way:

- Every resource ``deploy`` creates is tagged (``twinnet:endpoint`` = the endpoint), and
  models and endpoint configs are named ``<endpoint>-<UTC timestamp>``. So ``endpoints``
  lists only twinnet endpoints, and ``teardown`` and a re-run find exactly what an earlier
  run left, even after a crash.
- ``deploy`` is declarative and safe to re-run: the same inputs against an endpoint already
  serving them change nothing; new inputs create a new model and config and update the
  endpoint in place, then delete the superseded ones. Artifacts are stored under a
  content-addressed key, so re-uploading the same model writes nothing new.
- Every step that creates something records how to undo it. A failure (or Ctrl-C) half way
  undoes this run's steps in reverse and the error says what was rolled back and, if
  anything could not be, exactly what is left and how to remove it.
- Nothing a live endpoint runs on is ever deleted. Once CreateEndpoint or UpdateEndpoint has
  taken effect, rollback keeps the endpoint config, model and artifact the endpoint now
  references (it asks the endpoint before each deletion) and names them; the next deploy
  finishes the job. Switching back would be a second update that can itself fail.
- ``teardown`` deletes only configs and models tagged by twinnet for that endpoint, and only
  the artifacts in that endpoint's own key layout; anything else it finds is named and left.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import TwinnetError
from ..spec import SPEC_FILE

__all__ = [
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
]

#: The single production variant every twinnet endpoint has.
VARIANT = "AllTraffic"
DEFAULT_INSTANCE_TYPE = "ml.m5.xlarge"
TAG_MANAGED = "twinnet:managed-by"
TAG_ENDPOINT = "twinnet:endpoint"
TAG_ARTIFACT = "twinnet:artifact"
TAG_DEPLOYMENT = "twinnet:deployment"
TAG_ARTIFACTS_PREFIX = "twinnet:artifacts"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"

_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_ROLE_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_STAMP_LEN = len("-20240101-000000-000")
_CREDENTIAL_CODES = {
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidSignatureException",
}
_NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "AWS_PROFILE or --profile, or run `aws configure`"
)

#: Progress callback: ``report(event, message)``; events are ``step``, ``wait``, ``rollback``,
#: and ``kept`` (teardown: a resource it leaves, and why).
Reporter = Callable[[str, str], None]


def _quiet(event: str, message: str) -> None:
    """The default reporter: say nothing."""


# ---------------------------------------------------------------------------- arguments


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


def validate_role_arn(arn: str) -> str:
    """Reject anything that is not an IAM role ARN before any AWS call is made."""
    if not _ROLE_RE.match(arn or ""):
        raise TwinnetError(
            f"--role {arn!r} is not an IAM role ARN; expected arn:aws:iam::<12-digit account>:role/<name>"
        )
    return arn


def validate_endpoint_name(name: str) -> str:
    """SageMaker's name rule: 1-63 letters, digits and hyphens, not starting with a hyphen."""
    if not _NAME_RE.match(name or "") or name.endswith("-"):
        raise TwinnetError(
            f"endpoint name {name!r} is invalid: use 1-63 letters, digits and hyphens, "
            "starting and ending with a letter or digit"
        )
    return name


def _validate_env(env: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in env.items():
        if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]{0,1023}$", key):
            raise TwinnetError(f"--env {key!r}: not a valid environment variable name")
        out[key] = str(value)
    return out


# ---------------------------------------------------------------------------- boto3 plumbing


def open_session(region: str | None = None, profile: str | None = None) -> Any:
    """A boto3 session that has a region and credentials, or a one-line error saying which is missing."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ProfileNotFound
    except ImportError:  # pragma: no cover - boto3 is in the aws extra
        raise TwinnetError("boto3 is not installed: pip install 'twinnet[aws]'") from None
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
        credentials = session.get_credentials()
    except ProfileNotFound as exc:
        raise TwinnetError(f"{exc}; list profiles with `aws configure list-profiles`") from None
    except BotoCoreError as exc:
        raise TwinnetError(f"cannot read AWS configuration: {_one_line(str(exc))}") from None
    if not session.region_name:
        raise TwinnetError("no AWS region: pass --region or set AWS_DEFAULT_REGION")
    if credentials is None:
        raise TwinnetError(_NO_CREDENTIALS)
    return session


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    if text.lstrip().lower().startswith(("<!doctype", "<html")):
        text = "the service returned an HTML error page"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _describe_error(what: str, exc: BaseException) -> str:
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return _NO_CREDENTIALS
    if isinstance(exc, EndpointConnectionError):
        return f"{what}: cannot reach AWS ({_one_line(str(exc))})"
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        message = _one_line(exc.response.get("Error", {}).get("Message", "") or str(exc))
        if code in _CREDENTIAL_CODES:
            return f"{what}: AWS rejected the credentials ({code}: {message}); refresh them or pick another profile"
        if code in ("AccessDenied", "AccessDeniedException"):
            return f"{what}: access denied ({message}); see the IAM permissions in the deploy guide"
        return f"{what} failed: {code or 'error'}: {message}"
    return f"{what} failed: {_one_line(str(exc)) or type(exc).__name__}"


@contextmanager
def _aws(what: str) -> Iterator[None]:
    """Turn boto3/botocore failures into a one-line :class:`TwinnetError`."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise TwinnetError(_describe_error(what, exc)) from None


def _not_found(exc: BaseException) -> bool:
    code = _error_code(exc)
    message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", ""))
    return code in ("404", "NoSuchKey", "NotFound", "ResourceNotFound") or (
        code == "ValidationException"
        and ("Could not find" in message or "does not exist" in message)
    )


def _tags(endpoint: str, **extra: str) -> list[dict[str, str]]:
    tags = {TAG_MANAGED: f"twinnet {__version__}", TAG_ENDPOINT: endpoint, **extra}
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _tag_dict(sm: Any, arn: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for page in sm.get_paginator("list_tags").paginate(ResourceArn=arn):
        out.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
    return out


def _describe_endpoint(sm: Any, name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return sm.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise


def _variant_models(sm: Any, config_name: str) -> list[str]:
    from botocore.exceptions import ClientError

    try:
        config = sm.describe_endpoint_config(EndpointConfigName=config_name)
    except ClientError as exc:
        if _not_found(exc):
            return []
        raise
    return [v["ModelName"] for v in config.get("ProductionVariants", []) if v.get("ModelName")]


@dataclass
class _Owned:
    """Models and endpoint configs tagged for one endpoint (found by name prefix, checked by tag)."""

    configs: dict[str, dict[str, str]] = field(default_factory=dict)
    models: dict[str, dict[str, str]] = field(default_factory=dict)


def _base_name(endpoint: str) -> str:
    return endpoint[: 63 - _STAMP_LEN]


def _owned(sm: Any, endpoint: str) -> _Owned:
    """Everything deploy created for ``endpoint``; the name filter keeps the tag look-ups few."""
    owned = _Owned()
    base = _base_name(endpoint)
    for page in sm.get_paginator("list_endpoint_configs").paginate(NameContains=base):
        for item in page.get("EndpointConfigs", []):
            tags = _tag_dict(sm, item["EndpointConfigArn"])
            if _is_ours(tags, endpoint):
                owned.configs[item["EndpointConfigName"]] = tags
    for page in sm.get_paginator("list_models").paginate(NameContains=base):
        for item in page.get("Models", []):
            tags = _tag_dict(sm, item["ModelArn"])
            if _is_ours(tags, endpoint):
                owned.models[item["ModelName"]] = tags
    return owned


def _is_ours(tags: Mapping[str, str], endpoint: str) -> bool:
    """twinnet's ownership tags for ``endpoint``: the only resources deploy and teardown delete."""
    return TAG_MANAGED in tags and tags.get(TAG_ENDPOINT) == endpoint


def _check_managed(sm: Any, desc: dict[str, Any]) -> dict[str, str]:
    tags = _tag_dict(sm, desc["EndpointArn"])
    if not _is_ours(tags, desc["EndpointName"]):
        raise TwinnetError(
            f"endpoint {desc['EndpointName']!r} exists but was not created by twinnet; "
            "pick another --endpoint name"
        )
    return tags


def _resource_id(endpoint: str) -> str:
    return f"endpoint/{endpoint}/variant/{VARIANT}"


def _policy_name(endpoint: str) -> str:
    return f"twinnet-{endpoint}-invocations"


@dataclass
class _Scaling:
    """A variant's scaling target and policies, as read back, so they can be restored."""

    min_capacity: int
    max_capacity: int
    policies: list[dict[str, Any]]


def _read_scaling(aas: Any, endpoint: str) -> _Scaling | None:
    rid = _resource_id(endpoint)
    targets = aas.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[rid], ScalableDimension=SCALABLE_DIMENSION
    ).get("ScalableTargets", [])
    if not targets:
        return None
    policies = aas.describe_scaling_policies(
        ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION
    ).get("ScalingPolicies", [])
    return _Scaling(targets[0]["MinCapacity"], targets[0]["MaxCapacity"], policies)


def _remove_scaling(aas: Any, endpoint: str, scaling: _Scaling) -> list[str]:
    """Delete the policies, then deregister the target (AWS's documented order)."""
    rid = _resource_id(endpoint)
    removed = []
    for policy in scaling.policies:
        aas.delete_scaling_policy(
            PolicyName=policy["PolicyName"],
            ServiceNamespace="sagemaker",
            ResourceId=rid,
            ScalableDimension=SCALABLE_DIMENSION,
        )
        removed.append(f"scaling policy {policy['PolicyName']}")
    aas.deregister_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION
    )
    removed.append(f"scalable target {rid}")
    return removed


def _restore_scaling(aas: Any, endpoint: str, scaling: _Scaling) -> None:
    rid = _resource_id(endpoint)
    aas.register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=rid,
        ScalableDimension=SCALABLE_DIMENSION,
        MinCapacity=scaling.min_capacity,
        MaxCapacity=scaling.max_capacity,
    )
    for policy in scaling.policies:
        kwargs: dict[str, Any] = {
            "PolicyName": policy["PolicyName"],
            "ServiceNamespace": "sagemaker",
            "ResourceId": rid,
            "ScalableDimension": SCALABLE_DIMENSION,
            "PolicyType": policy["PolicyType"],
        }
        for key in ("TargetTrackingScalingPolicyConfiguration", "StepScalingPolicyConfiguration"):
            if policy.get(key):
                kwargs[key] = policy[key]
        aas.put_scaling_policy(**kwargs)


def _apply_scaling(aas: Any, endpoint: str, autoscale: Autoscale) -> None:
    """Register the variant and attach one target-tracking policy (both calls are upserts)."""
    rid = _resource_id(endpoint)
    aas.register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=rid,
        ScalableDimension=SCALABLE_DIMENSION,
        MinCapacity=autoscale.min_capacity,
        MaxCapacity=autoscale.max_capacity,
    )
    aas.put_scaling_policy(
        PolicyName=_policy_name(endpoint),
        ServiceNamespace="sagemaker",
        ResourceId=rid,
        ScalableDimension=SCALABLE_DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(autoscale.target),
            "PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC},
            "ScaleInCooldown": 300,
            "ScaleOutCooldown": 60,
        },
    )


# ---------------------------------------------------------------------------- rollback ledger


@dataclass
class _Step:
    what: str
    undo: Callable[[], None]
    #: ``undo`` deletes something an endpoint can run on (artifact, model, endpoint config).
    guarded: bool = False


@dataclass
class _Rollback:
    """What a rollback did: undone, kept because the endpoint runs on it, left by failure."""

    undone: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


class _Ledger:
    """What this run created, undone in reverse order if the run fails.

    A guarded step is undone only once ``in_use`` (asked afresh before each such step) shows
    the endpoint does not run on it: once CreateEndpoint or UpdateEndpoint has taken effect,
    deleting the endpoint's config, model or artifact would break the live endpoint.
    """

    def __init__(self, report: Reporter, in_use: Callable[[set[str]], set[str]]) -> None:
        self.steps: list[_Step] = []
        self.report = report
        self.in_use = in_use

    def add(self, what: str, undo: Callable[[], None], guarded: bool = False) -> None:
        self.steps.append(_Step(what, undo, guarded))

    def rollback(self) -> _Rollback:
        out = _Rollback()
        pending = {step.what for step in self.steps if step.guarded}
        for step in reversed(self.steps):
            try:
                if step.guarded and step.what in self.in_use(pending):
                    out.kept.append(step.what)
                    self.report("rollback", f"kept {step.what}: the endpoint runs on it")
                    continue
                step.undo()
            except _Kept as exc:
                out.notes.append(str(exc))
            except _Left as exc:
                out.left.append(f"{step.what} ({exc})")
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none hides another
                out.left.append(f"{step.what} ({_describe_error('undo', exc)})")
            else:
                out.undone.append(step.what)
                self.report("rollback", f"removed {step.what}")
        self.steps.clear()
        return out


class _Left(Exception):
    """An undo step that cannot run now; its message says why."""


class _Kept(Exception):
    """An undo step that must not run: the endpoint already runs on what it would undo."""


_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack")


def _in_use(sm: Any, endpoint: str, pending: set[str]) -> set[str]:
    """Labels (as the ledger names them) of the config, models and artifacts ``endpoint`` runs on.

    While the endpoint is still being created or updated, this run's own resources
    (``pending``) count as in use too: the change in flight may be to them.
    """
    desc = _describe_endpoint(sm, endpoint)
    if desc is None or desc["EndpointStatus"] == "Deleting":
        return set()
    refs = _config_refs(sm, desc["EndpointConfigName"])
    if desc["EndpointStatus"] in _BUSY:
        refs |= pending
    return refs


def _config_refs(sm: Any, config: str) -> set[str]:
    refs = {f"endpoint config {config}"}
    for model in _variant_models(sm, config):
        refs.add(f"model {model}")
        url = _model_data_url(sm, model)
        if url:
            refs.add(f"S3 object {url}")
    return refs


def _model_data_url(sm: Any, model: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        desc = sm.describe_model(ModelName=model)
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise
    return desc.get("PrimaryContainer", {}).get("ModelDataUrl")


def _rollback_message(endpoint: str, region: str, cause: str, result: _Rollback) -> str:
    """One line: the cause, what was undone, what the endpoint keeps running on, what is left."""
    message = f"deploy of {endpoint} in {region} failed: {cause}; rolled back {len(result.undone)} resource(s)"
    if result.kept:
        message += f"; KEPT, as endpoint {endpoint} runs on them: {', '.join(result.kept)}"
    for note in result.notes:
        message += f"; {note}"
    if result.left:
        message += (
            f"; LEFT BEHIND: {'; '.join(result.left)}; "
            f"remove with `twinnet teardown {endpoint} --delete-artifacts`"
        )
    elif result.kept or result.notes:
        message += "; nothing else left behind"
    else:
        message += ", nothing left behind"
    return message


# ---------------------------------------------------------------------------- deploy


@dataclass
class DeployResult:
    """What ``deploy`` did.

    Attributes:
        endpoint: the endpoint name.
        region: the endpoint's AWS region.
        action: ``created``, ``updated`` or ``unchanged``.
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


def artifact_digest(model_dir: str | Path, options: Mapping[str, Any] | None = None) -> str:
    """SHA-256 of the model directory's files, the packaging options and twinnet's version.

    The ``.mar`` itself is not reproducible byte for byte (it records its creation time),
    so the digest is taken over what goes into it.
    """
    root = Path(model_dir)
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {"twinnet": __version__, "options": dict(options or {})}, sort_keys=True
        ).encode()
    )
    # The files build_archive ships: the directory's top-level, non-hidden files.
    for path in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _stamp() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}"


def _check_bucket(s3: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = _error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise TwinnetError(
                f"S3 bucket {bucket!r} does not exist; create it (aws s3 mb s3://{bucket}) or pass another --bucket"
            ) from None
        if code in ("403", "AccessDenied"):
            raise TwinnetError(
                f"S3 bucket {bucket!r}: access denied; check the bucket name and your s3:ListBucket permission"
            ) from None
        raise


def _object_exists(s3: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def wait_in_service(
    sm: Any,
    endpoint: str,
    report: Reporter = _quiet,
    poll_s: float = 15.0,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Poll ``describe_endpoint`` until it leaves Creating/Updating; returns the last description.

    Polling (rather than boto3's waiter) lets each poll report the status and elapsed time.
    """
    start = time.monotonic()
    while True:
        with _aws(f"describe endpoint {endpoint}"):
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


def deploy(
    model_dir: str | Path,
    endpoint: str,
    bucket: str,
    role: str,
    image: str,
    instance_type: str = DEFAULT_INSTANCE_TYPE,
    count: int | None = None,
    autoscale: Autoscale | None = None,
    wait: bool = False,
    prefix: str = "twinnet",
    env: Mapping[str, str] | None = None,
    session: Any = None,
    region: str | None = None,
    profile: str | None = None,
    report: Reporter = _quiet,
    poll_s: float = 15.0,
    wait_timeout_s: float = 3600.0,
    package_options: Mapping[str, Any] | None = None,
) -> DeployResult:
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
        region: AWS region when no session is given.
        profile: AWS profile when no session is given.
        report: progress callback ``report(event, message)``.
        poll_s: seconds between status polls while waiting.
        wait_timeout_s: give up waiting (and roll back) after this long.
        package_options: keyword arguments for :func:`twinnet.deploy.package.package`.

    Raises:
        TwinnetError: bad arguments, missing credentials/bucket, or a failed step (after
            rolling back what this run created; the message lists anything left). If the
            endpoint already runs this run's new config when the failure comes, that config,
            its model and its artifact are kept and listed as KEPT, not deleted.
    """
    validate_endpoint_name(endpoint)
    validate_role_arn(role)
    if not image or any(c.isspace() for c in image):
        raise TwinnetError(
            "--image must be a container image URI, e.g. <account>.dkr.ecr.<region>.amazonaws.com/twinnet:0.1.0"
        )
    if not instance_type.startswith("ml."):
        raise TwinnetError(
            f"--instance-type {instance_type!r}: SageMaker instance types start with 'ml.'"
        )
    if count is None:
        count = autoscale.min_capacity if autoscale else 1
    if count < 1:
        raise TwinnetError("--count must be at least 1")
    if autoscale and not autoscale.min_capacity <= count <= autoscale.max_capacity:
        raise TwinnetError(
            f"--count {count} is outside --autoscale {autoscale.min_capacity}:{autoscale.max_capacity}"
        )
    model_dir = Path(model_dir)
    if not (model_dir / SPEC_FILE).is_file():
        raise TwinnetError(f"{model_dir} is not a twinnet model directory (no {SPEC_FILE})")
    env = _validate_env(env or {})
    prefix = prefix.strip("/")
    options = dict(package_options or {})
    session = session or open_session(region=region, profile=profile)
    region = session.region_name
    sm = session.client("sagemaker")
    s3 = session.client("s3")
    aas = session.client("application-autoscaling")

    with _aws(f"check S3 bucket {bucket}"):
        _check_bucket(s3, bucket)
    with _aws(f"describe endpoint {endpoint}"):
        existing = _describe_endpoint(sm, endpoint)
        if existing is not None:
            _check_managed(sm, existing)
    if existing is not None and existing["EndpointStatus"] not in ("InService", "Failed"):
        raise TwinnetError(
            f"endpoint {endpoint} is {existing['EndpointStatus']}; wait until it is InService "
            "(`twinnet endpoints`) and run deploy again"
        )
    if existing is not None and existing["EndpointStatus"] == "Failed":
        raise TwinnetError(
            f"endpoint {endpoint} is Failed ({_one_line(existing.get('FailureReason', 'no reason given'))}); "
            f"remove it with `twinnet teardown {endpoint}` and deploy again"
        )

    digest = artifact_digest(model_dir, options)
    deployment = hashlib.sha256(
        json.dumps(
            {
                "artifact": digest,
                "image": image,
                "type": instance_type,
                "count": count,
                "env": env,
                "role": role,
                "bucket": bucket,
                "prefix": prefix,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    key = (
        f"{prefix}/{endpoint}/{digest[:16]}/model.tar.gz"
        if prefix
        else f"{endpoint}/{digest[:16]}/model.tar.gz"
    )
    artifact = f"s3://{bucket}/{key}"
    artifacts_prefix = f"s3://{bucket}/{key.rsplit('/', 2)[0]}/"

    with _aws(f"list resources of endpoint {endpoint}"):
        owned = _owned(sm, endpoint)
    if existing is None and (owned.configs or owned.models):
        # Without an endpoint nothing uses them: what an earlier, crashed run left behind.
        _prune(sm, endpoint, None, [], owned, report)
        owned = _Owned()
    if existing is not None:
        current_config = existing["EndpointConfigName"]
        with _aws(f"describe endpoint config {current_config}"):
            current_models = _variant_models(sm, current_config)
        if owned.configs.get(current_config, {}).get(TAG_DEPLOYMENT) == deployment:
            return _unchanged(
                sm,
                aas,
                endpoint,
                region,
                existing,
                current_models,
                owned,
                autoscale,
                artifact,
                report,
            )

    ledger = _Ledger(report, lambda pending: _in_use(sm, endpoint, pending))
    try:
        return _roll_out(
            sm,
            s3,
            aas,
            ledger,
            report,
            model_dir=model_dir,
            endpoint=endpoint,
            region=region,
            bucket=bucket,
            key=key,
            role=role,
            image=image,
            instance_type=instance_type,
            count=count,
            autoscale=autoscale,
            wait=wait or autoscale is not None,
            env=env,
            options=options,
            digest=digest,
            deployment=deployment,
            artifact=artifact,
            artifacts_prefix=artifacts_prefix,
            existing=existing,
            owned=owned,
            poll_s=poll_s,
            wait_timeout_s=wait_timeout_s,
        )
    except BaseException as exc:
        if not ledger.steps:
            raise
        cause = (
            str(exc)
            if isinstance(exc, TwinnetError)
            else (
                "interrupted"
                if isinstance(exc, KeyboardInterrupt)
                else _describe_error("deploy", exc)
            )
        )
        report("rollback", f"deploy failed ({cause}); rolling back")
        raise TwinnetError(_rollback_message(endpoint, region, cause, ledger.rollback())) from None


def _unchanged(
    sm: Any,
    aas: Any,
    endpoint: str,
    region: str,
    existing: dict[str, Any],
    current_models: list[str],
    owned: _Owned,
    autoscale: Autoscale | None,
    artifact: str,
    report: Reporter,
) -> DeployResult:
    """Same inputs as the running deployment: reconcile scaling, prune leftovers, change nothing else."""
    report("step", f"endpoint {endpoint} already serves this model with these settings")
    with _aws(f"update scaling of {endpoint}"):
        if autoscale is not None:
            _apply_scaling(aas, endpoint, autoscale)
            report(
                "step", f"autoscaling {autoscale.min_capacity}-{autoscale.max_capacity} instances"
            )
        else:
            scaling = _read_scaling(aas, endpoint)
            if scaling is not None:
                for what in _remove_scaling(aas, endpoint, scaling):
                    report("step", f"removed {what}")
    removed = _prune(sm, endpoint, existing["EndpointConfigName"], current_models, owned, report)
    return DeployResult(
        endpoint=endpoint,
        region=region,
        action="unchanged",
        status=existing["EndpointStatus"],
        model=current_models[0] if current_models else "",
        endpoint_config=existing["EndpointConfigName"],
        artifact=artifact,
        autoscale=autoscale,
        removed=removed,
    )


def _prune(
    sm: Any,
    endpoint: str,
    keep_config: str | None,
    keep_models: list[str],
    owned: _Owned,
    report: Reporter,
) -> list[str]:
    """Delete this endpoint's configs and models that nothing uses any more."""
    removed = []
    with _aws(f"remove superseded resources of {endpoint}"):
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
    sm: Any,
    s3: Any,
    aas: Any,
    ledger: _Ledger,
    report: Reporter,
    *,
    model_dir: Path,
    endpoint: str,
    region: str,
    bucket: str,
    key: str,
    role: str,
    image: str,
    instance_type: str,
    count: int,
    autoscale: Autoscale | None,
    wait: bool,
    env: dict[str, str],
    options: dict[str, Any],
    digest: str,
    deployment: str,
    artifact: str,
    artifacts_prefix: str,
    existing: dict[str, Any] | None,
    owned: _Owned,
    poll_s: float,
    wait_timeout_s: float,
) -> DeployResult:
    """The steps that create things, each recorded in ``ledger`` with its undo."""
    from .package import package

    # 1. The artifact: content-addressed, so an identical one is never uploaded twice.
    with _aws(f"check {artifact}"):
        present = _object_exists(s3, bucket, key)
    if present:
        report("step", f"artifact already uploaded: {artifact}")
    else:
        with tempfile.TemporaryDirectory(prefix="twinnet-package-") as tmp:
            report("step", f"packaging {model_dir}")
            tarball = package(model_dir, Path(tmp) / "model.tar.gz", **options)
            size_mb = tarball.stat().st_size / 1e6
            report("step", f"uploading {size_mb:.1f} MB to {artifact}")
            with _aws(f"upload {artifact}"):
                s3.upload_file(str(tarball), bucket, key)
        ledger.add(
            f"S3 object {artifact}",
            lambda: s3.delete_object(Bucket=bucket, Key=key),
            guarded=True,
        )

    # 2. Model and endpoint config, named after the endpoint plus a UTC timestamp.
    name = f"{_base_name(endpoint)}-{_stamp()}"
    container: dict[str, Any] = {"Image": image, "ModelDataUrl": artifact}
    if env:
        container["Environment"] = env
    with _aws(f"create model {name}"):
        sm.create_model(
            ModelName=name,
            ExecutionRoleArn=role,
            PrimaryContainer=container,
            Tags=_tags(endpoint, **{TAG_ARTIFACT: digest, TAG_ARTIFACTS_PREFIX: artifacts_prefix}),
        )
    ledger.add(f"model {name}", lambda: sm.delete_model(ModelName=name), guarded=True)
    report("step", f"created model {name}")

    with _aws(f"create endpoint config {name}"):
        sm.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[
                {
                    "VariantName": VARIANT,
                    "ModelName": name,
                    "InstanceType": instance_type,
                    "InitialInstanceCount": count,
                    "InitialVariantWeight": 1.0,
                }
            ],
            Tags=_tags(endpoint, **{TAG_DEPLOYMENT: deployment}),
        )
    ledger.add(
        f"endpoint config {name}",
        lambda: sm.delete_endpoint_config(EndpointConfigName=name),
        guarded=True,
    )
    report("step", f"created endpoint config {name} ({count} x {instance_type})")

    # 3. The endpoint: created, or updated in place.
    if existing is None:
        with _aws(f"create endpoint {endpoint}"):
            sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=name, Tags=_tags(endpoint))
        ledger.add(f"endpoint {endpoint}", lambda: sm.delete_endpoint(EndpointName=endpoint))
        report("step", f"creating endpoint {endpoint}")
        action = "created"
    else:
        old_config = existing["EndpointConfigName"]
        with _aws(f"read scaling of {endpoint}"):
            old_scaling = _read_scaling(aas, endpoint)
        if old_scaling is not None:
            # AWS refuses updates that change a scaled variant's instance type; deregistering
            # first (and restoring on failure) makes every update safe.
            with _aws(f"suspend scaling of {endpoint}"):
                _remove_scaling(aas, endpoint, old_scaling)
            ledger.add(
                f"scaling of {endpoint} (to restore)",
                lambda: _restore_scaling(aas, endpoint, old_scaling),
            )
        with _aws(f"update endpoint {endpoint}"):
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=name)
        ledger.add(
            f"update of {endpoint} to {name}", lambda: _undo_update(sm, endpoint, name, old_config)
        )
        report("step", f"updating endpoint {endpoint} to {name}")
        action = "updated"

    status = "Creating" if action == "created" else "Updating"
    removed: list[str] = []
    if wait:
        desc = wait_in_service(sm, endpoint, report, poll_s=poll_s, timeout_s=wait_timeout_s)
        status = desc["EndpointStatus"]
        if status != "InService" or desc.get("EndpointConfigName") != name:
            reason = _one_line(desc.get("FailureReason") or f"status {status}")
            raise TwinnetError(
                f"endpoint {endpoint} did not come up ({reason}); see CloudWatch logs "
                f"/aws/sagemaker/Endpoints/{endpoint}"
            )
        if autoscale is not None:
            with _aws(f"register autoscaling for {endpoint}"):
                _apply_scaling(aas, endpoint, autoscale)
            ledger.add(f"autoscaling of {endpoint}", lambda: _drop_scaling(aas, endpoint))
            report(
                "step",
                f"autoscaling {autoscale.min_capacity}-{autoscale.max_capacity} instances "
                f"at {autoscale.target:g} invocations/instance/minute",
            )
        if action == "updated":
            removed = _prune(sm, endpoint, name, [name], owned, report)
    ledger.steps.clear()  # success: nothing to undo
    return DeployResult(
        endpoint=endpoint,
        region=region,
        action=action,
        status=status,
        model=name,
        endpoint_config=name,
        artifact=artifact,
        autoscale=autoscale if wait else None,
        removed=removed,
    )


def _drop_scaling(aas: Any, endpoint: str) -> None:
    scaling = _read_scaling(aas, endpoint)
    if scaling is not None:
        _remove_scaling(aas, endpoint, scaling)


def _undo_update(sm: Any, endpoint: str, new_config: str, old_config: str) -> None:
    """An accepted update is not recalled: the endpoint keeps the new deployment.

    Switching back would be a second update that can fail in its own right; keeping what
    the endpoint runs (the guarded ledger steps skip it) is always safe, and the next
    deploy finishes the job.
    """
    desc = sm.describe_endpoint(EndpointName=endpoint)
    running = desc.get("EndpointConfigName")
    if desc["EndpointStatus"] in ("Updating", "SystemUpdating"):
        raise _Kept(
            f"{endpoint} is still updating to {new_config}: run deploy again once it is InService"
        )
    if running == new_config:
        raise _Kept(f"{endpoint} now runs {new_config}: run deploy again to finish")
    if running != old_config:
        raise _Left(f"{endpoint} runs {running}")


# ---------------------------------------------------------------------------- endpoints, teardown


@dataclass
class EndpointInfo:
    """One twinnet endpoint, as ``twinnet endpoints`` lists it."""

    name: str
    status: str
    instance_type: str
    instances: int | None
    model: str
    modified: str


def list_endpoints(session: Any = None) -> list[EndpointInfo]:
    """Every endpoint in the region tagged as created by twinnet, oldest first."""
    session = session or open_session()
    sm = session.client("sagemaker")
    out = []
    with _aws("list endpoints"):
        summaries = [
            e
            for page in sm.get_paginator("list_endpoints").paginate(
                SortBy="CreationTime", SortOrder="Ascending"
            )
            for e in page.get("Endpoints", [])
        ]
        for summary in summaries:
            if TAG_MANAGED not in _tag_dict(sm, summary["EndpointArn"]):
                continue
            desc = _describe_endpoint(sm, summary["EndpointName"])
            if desc is None:  # deleted meanwhile
                continue
            variant = next(iter(desc.get("ProductionVariants") or []), {})
            instance_type, model = "", ""
            from botocore.exceptions import ClientError

            try:
                config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
                pv = next(iter(config.get("ProductionVariants") or []), {})
                instance_type, model = pv.get("InstanceType", ""), pv.get("ModelName", "")
            except ClientError as exc:
                if not _not_found(exc):
                    raise
            modified = desc.get("LastModifiedTime") or summary.get("LastModifiedTime")
            out.append(
                EndpointInfo(
                    name=desc["EndpointName"],
                    status=desc["EndpointStatus"],
                    instance_type=instance_type,
                    instances=variant.get("CurrentInstanceCount"),
                    model=model,
                    modified=_utc(modified),
                )
            )
    return out


def _utc(when: Any) -> str:
    """botocore gives local-time datetimes; the listing shows UTC."""
    if not isinstance(when, datetime):
        return str(when or "")
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M")


def _parse_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :] if uri.startswith("s3://") else uri
    bucket, _, key = rest.partition("/")
    return bucket, key


#: An artifact key directly under an endpoint's artifact prefix: ``<digest[:16]>/model.tar.gz``.
#: Anything deeper (``<prefix>/<endpoint>/<other endpoint>/...``) belongs to another endpoint.
_ARTIFACT_KEY_RE = re.compile(r"^[0-9a-f]{16}/model\.tar\.gz$")


def _resource_tags(sm: Any, kind: str, name: str) -> dict[str, str] | None:
    """Tags of an endpoint config or model; ``None`` if it does not exist."""
    from botocore.exceptions import ClientError

    try:
        if kind == "model":
            arn = sm.describe_model(ModelName=name)["ModelArn"]
        else:
            arn = sm.describe_endpoint_config(EndpointConfigName=name)["EndpointConfigArn"]
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise
    return _tag_dict(sm, arn)


@dataclass
class _Plan:
    """What teardown deletes, and what it names and leaves (not twinnet's for this endpoint)."""

    configs: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    prefixes: set[str] = field(default_factory=set)
    artifacts: set[str] = field(default_factory=set)
    keep_urls: set[str] = field(default_factory=set)
    kept: list[str] = field(default_factory=list)


def _plan_teardown(sm: Any, endpoint: str, desc: dict[str, Any] | None, owned: _Owned) -> _Plan:
    """Split the endpoint's configs and models into ours (to delete) and the rest (to leave).

    Ours means tagged by twinnet for this endpoint. The endpoint's current config may have
    been switched to someone else's by hand; that config, and every model it uses, stay.
    """
    plan = _Plan(configs=list(owned.configs))
    foreign: list[str] = []
    current = desc["EndpointConfigName"] if desc is not None else None
    if current is not None and current not in owned.configs:
        tags = _resource_tags(sm, "config", current)
        if tags is not None and _is_ours(tags, endpoint):
            plan.configs.append(current)
        elif tags is not None:
            foreign.append(current)
            plan.kept.append(f"endpoint config {current} (not created by twinnet for {endpoint})")
    used_by_kept = {m: c for c in foreign for m in _variant_models(sm, c)}
    candidates = list(owned.models)
    for config in plan.configs:
        candidates += [m for m in _variant_models(sm, config) if m not in candidates]
    candidates += [m for m in used_by_kept if m not in candidates]
    for model in candidates:
        _plan_model(sm, endpoint, model, owned.models.get(model), used_by_kept.get(model), plan)
    return plan


def _plan_model(
    sm: Any,
    endpoint: str,
    model: str,
    tags: dict[str, str] | None,
    kept_config: str | None,
    plan: _Plan,
) -> None:
    url = _model_data_url(sm, model)
    tags = tags if tags is not None else _resource_tags(sm, "model", model)
    if tags is None:  # already gone
        return
    if kept_config is not None:
        why = f"used by endpoint config {kept_config}, which stays"
    elif not _is_ours(tags, endpoint):
        why = f"not created by twinnet for {endpoint}"
    else:
        plan.models.append(model)
        if tags.get(TAG_ARTIFACTS_PREFIX):
            plan.prefixes.add(tags[TAG_ARTIFACTS_PREFIX])
        if url:
            plan.artifacts.add(url)
        return
    plan.kept.append(f"model {model} ({why})")
    if url:
        plan.keep_urls.add(url)


class _Deleter:
    """Runs deletions one by one, and reports every failure at the end instead of stopping."""

    def __init__(self, report: Reporter) -> None:
        self.report = report
        self.deleted: list[str] = []
        self.failed: list[str] = []

    def attempt(self, what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - keep going, report everything at the end
            if _not_found(exc):
                return
            self.failed.append(f"{what} ({_describe_error('delete', exc)})")
        else:
            self.deleted.append(what)
            self.report("step", f"deleted {what}")


def _delete_scaling(aas: Any, endpoint: str, deleter: _Deleter) -> None:
    try:
        scaling = _read_scaling(aas, endpoint)
    except Exception as exc:  # noqa: BLE001
        raise TwinnetError(_describe_error(f"read scaling of {endpoint}", exc)) from None
    if scaling is None:
        return
    rid = _resource_id(endpoint)
    for policy in scaling.policies:
        deleter.attempt(
            f"scaling policy {policy['PolicyName']}",
            lambda p=policy: aas.delete_scaling_policy(
                PolicyName=p["PolicyName"],
                ServiceNamespace="sagemaker",
                ResourceId=rid,
                ScalableDimension=SCALABLE_DIMENSION,
            ),
        )
    deleter.attempt(
        f"scalable target {rid}",
        lambda: aas.deregister_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION
        ),
    )


def _artifact_keys(s3: Any, plan: _Plan, deleter: _Deleter) -> set[tuple[str, str]]:
    """This endpoint's artifacts in S3: its own layout under its prefix, and its models' URLs."""
    keys: set[tuple[str, str]] = set()
    for uri in plan.prefixes:
        bucket, key_prefix = _parse_s3(uri)
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=key_prefix
            ):
                for obj in page.get("Contents", []):
                    if _ARTIFACT_KEY_RE.match(obj["Key"][len(key_prefix) :]):
                        keys.add((bucket, obj["Key"]))
        except Exception as exc:  # noqa: BLE001
            if not _not_found(exc) and _error_code(exc) != "NoSuchBucket":
                deleter.failed.append(f"listing {uri} ({_describe_error('list', exc)})")
    # S3 deletes succeed for absent keys too: only what exists is deleted and reported.
    for bucket, key in {_parse_s3(url) for url in plan.artifacts} - keys:
        try:
            if _object_exists(s3, bucket, key):
                keys.add((bucket, key))
        except Exception as exc:  # noqa: BLE001
            if _error_code(exc) != "NoSuchBucket":
                deleter.failed.append(
                    f"S3 object s3://{bucket}/{key} ({_describe_error('check', exc)})"
                )
    return keys - {_parse_s3(url) for url in plan.keep_urls}


def teardown(
    endpoint: str,
    delete_artifacts: bool = False,
    session: Any = None,
    report: Reporter = _quiet,
) -> list[str]:
    """Delete the endpoint, its scaling, every endpoint config and model deploy made for it.

    Also deletes what a crashed deploy left (found by tag), and with ``delete_artifacts``
    the S3 objects of the endpoint's own artifact layout. Only configs and models tagged by
    twinnet for this endpoint are deleted, with their artifacts: anything else the endpoint
    uses (a config switched to by hand, another team's model) is named through
    ``report("kept", ...)`` and left, with its artifact. Returns what was deleted.

    Raises:
        TwinnetError: the endpoint does not exist (and nothing of it is left), it was not
            created by twinnet, or some deletions failed (the message says which).
    """
    validate_endpoint_name(endpoint)
    session = session or open_session()
    sm = session.client("sagemaker")
    aas = session.client("application-autoscaling")
    with _aws(f"describe endpoint {endpoint}"):
        desc = _describe_endpoint(sm, endpoint)
        if desc is not None:
            _check_managed(sm, desc)
        owned = _owned(sm, endpoint)
    if desc is None and not owned.configs and not owned.models:
        raise TwinnetError(
            f"endpoint {endpoint!r} does not exist in {session.region_name}; "
            "`twinnet endpoints` lists the twinnet endpoints there"
        )
    with _aws(f"describe models of {endpoint}"):
        plan = _plan_teardown(sm, endpoint, desc, owned)
    for what in plan.kept:
        report("kept", what)

    deleter = _Deleter(report)
    _delete_scaling(aas, endpoint, deleter)
    if desc is not None:
        deleter.attempt(f"endpoint {endpoint}", lambda: sm.delete_endpoint(EndpointName=endpoint))
    for config in plan.configs:
        deleter.attempt(
            f"endpoint config {config}",
            lambda c=config: sm.delete_endpoint_config(EndpointConfigName=c),
        )
    for model in plan.models:
        deleter.attempt(f"model {model}", lambda m=model: sm.delete_model(ModelName=m))
    if delete_artifacts:
        s3 = session.client("s3")
        for bucket, key in sorted(_artifact_keys(s3, plan, deleter)):
            deleter.attempt(
                f"S3 object s3://{bucket}/{key}",
                lambda b=bucket, k=key: s3.delete_object(Bucket=b, Key=k),
            )
    if deleter.failed:
        done = (
            f"deleted {len(deleter.deleted)} resource(s)" if deleter.deleted else "deleted nothing"
        )
        raise TwinnetError(
            f"teardown of {endpoint} incomplete: {done}; NOT deleted: {'; '.join(deleter.failed)}"
        )
    return deleter.deleted
