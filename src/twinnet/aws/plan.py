"""What one deploy run is to do: its inputs checked, and the frozen :class:`Plan` they make.

Every check that needs no AWS call runs before a session is opened, so a typo costs
nothing. :class:`Plan` carries the inputs with what follows from them (the artifact's
digest and S3 key, the deployment hash that tells "nothing to change", the artifact
prefix that teardown may empty); the rollout reads it and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinnet.aws.modes import (
    ASYNC,
    MODES,
    REALTIME,
    SERVERLESS,
    AsyncOutput,
    Serverless,
    mode_environment,
)
from twinnet.aws.resources import check_managed, describe_endpoint, validate_endpoint_name
from twinnet.aws.scaling import Autoscale
from twinnet.aws.session import aws, error_code, one_line
from twinnet.container.settings import settings_from_env
from twinnet.core.spec import SPEC_FILE
from twinnet.core.version import __version__
from twinnet.engines.torchserve.archive import archive_files
from twinnet.errors import TwinnetError
from twinnet.index import store

__all__ = ["Plan", "artifact_digest", "check_arguments", "check_target", "validate_role_arn"]

_ROLE_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_ENV_KEY_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,1023}$")


def validate_role_arn(arn: str) -> str:
    """Reject anything that is not an IAM role ARN before any AWS call is made."""
    if not _ROLE_RE.match(arn or ""):
        raise TwinnetError(
            f"--role {arn!r} is not an IAM role ARN; expected arn:aws:iam::<12-digit account>:role/<name>"
        )
    return arn


def artifact_digest(model_dir: str | Path, options: Mapping[str, Any] | None = None) -> str:
    """SHA-256 of the model directory's files, the packaging options and twinnet's version.

    The ``.mar`` itself is not reproducible byte for byte (it records its creation time),
    so the digest is taken over what goes into it.
    """
    root = Path(model_dir)
    options = dict(options or {})
    index = options.pop("index", None)
    h = hashlib.sha256()
    h.update(json.dumps({"twinnet": __version__, "options": options}, sort_keys=True).encode())

    files = list(archive_files(root))  # exactly the files build_archive ships
    if index:  # the gallery's content, not its path: `index add` to the same folder redeploys
        files += [Path(index) / n for n in store.FILES]
    for path in files:
        h.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Plan:
    """One deploy run's inputs, checked, with what follows from them (key, hash, prefix)."""

    model_dir: Path
    endpoint: str
    region: str
    bucket: str
    prefix: str
    role: str
    image: str
    instance_type: str
    count: int
    autoscale: Autoscale | None
    wait: bool
    env: Mapping[str, str]
    options: Mapping[str, Any]
    #: :func:`artifact_digest` of the model directory and ``options``.
    digest: str
    poll_s: float = 15.0
    wait_timeout_s: float = 3600.0
    #: ``realtime``, ``serverless`` or ``async`` (:mod:`twinnet.aws.modes`).
    mode: str = REALTIME
    serverless: Serverless | None = None
    async_output: AsyncOutput | None = None

    @property
    def key(self) -> str:
        """The artifact's S3 key: ``<prefix>/<endpoint>/<digest[:16]>/model.tar.gz``."""
        parts = [self.prefix] if self.prefix else []
        return "/".join([*parts, self.endpoint, self.digest[:16], "model.tar.gz"])

    @property
    def artifact(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def artifacts_prefix(self) -> str:
        """The endpoint's own artifact folder, which teardown may empty."""
        return f"s3://{self.bucket}/{self.key.rsplit('/', 2)[0]}/"

    @property
    def deployment(self) -> str:
        """Hash of everything an endpoint config stands for: equal hashes mean nothing to change."""
        settings: dict[str, Any] = {
            "artifact": self.digest,
            "image": self.image,
            "env": dict(self.env),
            "role": self.role,
            "bucket": self.bucket,
            "prefix": self.prefix,
        }
        if self.mode == SERVERLESS and self.serverless is not None:
            settings["serverless"] = self.serverless.variant()
        else:  # realtime as before, so an endpoint deployed earlier stays "unchanged"
            settings.update(type=self.instance_type, count=self.count)
        if self.mode == ASYNC and self.async_output is not None:
            settings["async"] = self.async_output.config()
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def check_arguments(
    model_dir: str | Path,
    endpoint: str,
    role: str,
    image: str,
    instance_type: str,
    count: int | None,
    autoscale: Autoscale | None,
    env: Mapping[str, str],
    mode: str = REALTIME,
    async_output: AsyncOutput | None = None,
) -> tuple[int, dict[str, str]]:
    """Every check that needs no AWS call; returns the instance count and the environment."""
    validate_endpoint_name(endpoint)
    _check_mode(mode, count, autoscale, async_output)
    validate_role_arn(role)
    if not image or any(c.isspace() for c in image):
        raise TwinnetError(
            "--image must be a container image URI, e.g. <account>.dkr.ecr.<region>.amazonaws.com/twinnet:0.1.0"
        )
    if not instance_type.startswith("ml."):
        raise TwinnetError(
            f"--instance-type {instance_type!r}: SageMaker instance types start with 'ml.'"
        )
    if count is None:  # an endpoint is created with at least one instance, even one scaled to 0
        count = max(1, autoscale.min_capacity) if autoscale else 1
    if count < 1:
        raise TwinnetError("--count must be at least 1")
    if autoscale and not max(1, autoscale.min_capacity) <= count <= autoscale.max_capacity:
        raise TwinnetError(
            f"--count {count} is outside --autoscale {autoscale.min_capacity}:{autoscale.max_capacity}"
        )
    if not (Path(model_dir) / SPEC_FILE).is_file():
        raise TwinnetError(f"{model_dir} is not a twinnet model directory (no {SPEC_FILE})")
    for key in env:
        if not _ENV_KEY_RE.match(key):
            raise TwinnetError(f"--env {key!r}: not a valid environment variable name")
    env = mode_environment(mode, {key: str(value) for key, value in env.items()})
    try:  # the container reads these at start: a typo is refused here, not on SageMaker's host
        settings_from_env(env)
    except TwinnetError as exc:
        raise TwinnetError(f"--env: {exc}") from None
    return count, dict(env)


def _check_mode(
    mode: str, count: int | None, autoscale: Autoscale | None, async_output: AsyncOutput | None
) -> None:
    """What each mode takes: serverless has no instances, only async has an output or 0 instances."""
    if mode not in MODES:
        raise TwinnetError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    if (async_output is not None) != (mode == ASYNC):
        raise TwinnetError(
            "--mode async needs --output s3://BUCKET/PREFIX for the answers"
            if mode == ASYNC
            else "--output, --failure-output and --sns-topic are for --mode async"
        )
    if mode == SERVERLESS and (autoscale is not None or count is not None):
        raise TwinnetError(
            "a serverless endpoint has no instances to count or scale: SageMaker scales it "
            "per request up to --max-concurrency (drop --count and --autoscale)"
        )
    if autoscale is not None and autoscale.min_capacity == 0 and mode != ASYNC:
        raise TwinnetError(
            "--autoscale 0:N: only an asynchronous endpoint (--mode async) scales to 0 "
            "instances; use --mode serverless for per-request billing of direct calls"
        )


def check_target(sm: Any, s3: Any, endpoint: str, bucket: str) -> dict[str, Any] | None:
    """The bucket exists, and the endpoint is absent or twinnet's and settled; returns it."""
    with aws(f"check S3 bucket {bucket}"):
        _check_bucket(s3, bucket)
    with aws(f"describe endpoint {endpoint}"):
        existing = describe_endpoint(sm, endpoint)
        if existing is not None:
            check_managed(sm, existing)
    if existing is None or existing["EndpointStatus"] == "InService":
        return existing
    if existing["EndpointStatus"] == "Failed":
        raise TwinnetError(
            f"endpoint {endpoint} is Failed ({one_line(existing.get('FailureReason', 'no reason given'))}); "
            f"remove it with `twinnet teardown {endpoint}` and deploy again"
        )
    raise TwinnetError(
        f"endpoint {endpoint} is {existing['EndpointStatus']}; wait until it is InService "
        "(`twinnet endpoints`) and run deploy again"
    )


def _check_bucket(s3: Any, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise TwinnetError(
                f"S3 bucket {bucket!r} does not exist; create it (aws s3 mb s3://{bucket}) or pass another --bucket"
            ) from None
        if code in ("403", "AccessDenied"):
            raise TwinnetError(
                f"S3 bucket {bucket!r}: access denied; check the bucket name and your s3:ListBucket permission"
            ) from None
        raise
