"""The three ways SageMaker hosts a model, and what each adds to an endpoint config.

- ``realtime``: instances billed by the hour, busy or not; answers within 60 s, 6 MB bodies.
- ``serverless``: billed per request (memory x duration); scales to zero; no GPU; 1-6 GB of
  memory; 4 MB bodies; a read-only filesystem outside ``/tmp``; cold starts.
- ``async``: instances as real-time, but requests are S3 objects queued by SageMaker and
  answers are written to S3; the instance count may scale to zero on the queue's backlog.

:func:`endpoint_mode` reads the mode back from an endpoint config, so clients and the
listing learn it from SageMaker rather than from anything twinnet stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twinnet.errors import TwinnetError

__all__ = [
    "ASYNC",
    "MODES",
    "REALTIME",
    "SERVERLESS",
    "SERVERLESS_IMAGE_BYTES",
    "SERVERLESS_MEMORY_MB",
    "SERVERLESS_REQUEST_BYTES",
    "AsyncOutput",
    "Serverless",
    "endpoint_mode",
    "mode_environment",
    "parse_s3_uri",
]

REALTIME, SERVERLESS, ASYNC = "realtime", "serverless", "async"
MODES = (REALTIME, SERVERLESS, ASYNC)
#: The memory sizes a serverless endpoint can have (ProductionVariantServerlessConfig).
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_MAX_CONCURRENCY = 200
#: Serverless invocations take at most 4 MB of request and of response.
SERVERLESS_REQUEST_BYTES = 4 * 2**20
#: A serverless endpoint's container image may be at most 10 GB.
SERVERLESS_IMAGE_BYTES = 10 * 10**9

_S3_RE = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/.*)?$")
_SNS_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[\w-]{1,256}$")


def parse_s3_uri(uri: str, what: str = "S3 location") -> tuple[str, str]:
    """``s3://bucket/key`` as ``(bucket, key)``; a clear error for anything else."""
    match = _S3_RE.match(uri or "")
    if not match:
        raise TwinnetError(f"{what} {uri!r} is not an S3 URI; expected s3://BUCKET/PREFIX")
    return match.group(1), (match.group(2) or "/")[1:]


@dataclass(frozen=True)
class Serverless:
    """A serverless variant: its memory, its concurrency cap, and any provisioned concurrency."""

    memory_mb: int = 2048
    max_concurrency: int = 5
    provisioned: int | None = None

    def __post_init__(self) -> None:
        if self.memory_mb not in SERVERLESS_MEMORY_MB:
            shown = ", ".join(map(str, SERVERLESS_MEMORY_MB))
            raise TwinnetError(f"--memory-mb {self.memory_mb}: serverless memory is one of {shown}")
        if not 1 <= self.max_concurrency <= SERVERLESS_MAX_CONCURRENCY:
            raise TwinnetError(
                f"--max-concurrency {self.max_concurrency}: must be 1-{SERVERLESS_MAX_CONCURRENCY}"
            )
        if self.provisioned is not None and not 1 <= self.provisioned <= self.max_concurrency:
            raise TwinnetError(
                f"--provisioned-concurrency {self.provisioned}: must be 1-{self.max_concurrency} "
                "(at most --max-concurrency)"
            )

    def variant(self) -> dict[str, int]:
        """The variant's ``ServerlessConfig``."""
        config = {"MemorySizeInMB": self.memory_mb, "MaxConcurrency": self.max_concurrency}
        if self.provisioned is not None:
            config["ProvisionedConcurrency"] = self.provisioned
        return config


@dataclass(frozen=True)
class AsyncOutput:
    """Where an asynchronous endpoint writes answers and failures, and whom it tells.

    Attributes:
        output: ``s3://`` prefix for answers (SageMaker writes ``<inference id>.out`` there).
        failure: ``s3://`` prefix for failures; SageMaker's default is the output prefix.
        topic: an SNS topic ARN told of every answer and failure.
        max_concurrent: invocations one instance takes at once (SageMaker's default if unset).
    """

    output: str
    failure: str | None = None
    topic: str | None = None
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        parse_s3_uri(self.output, "--output")
        if self.failure is not None:
            parse_s3_uri(self.failure, "--failure-output")
        if self.topic is not None and not _SNS_RE.match(self.topic):
            raise TwinnetError(
                f"--sns-topic {self.topic!r} is not an SNS topic ARN "
                "(arn:aws:sns:<region>:<account>:<name>)"
            )
        if self.max_concurrent is not None and not 1 <= self.max_concurrent <= 1000:
            raise TwinnetError("--max-concurrent-invocations must be 1-1000")

    @property
    def requests(self) -> str:
        """Where clients put request objects: beside the answers, under ``requests/``."""
        return self.output.rstrip("/") + "/requests/"

    def config(self) -> dict[str, Any]:
        """The endpoint config's ``AsyncInferenceConfig``."""
        output: dict[str, Any] = {"S3OutputPath": self.output}
        if self.failure:
            output["S3FailurePath"] = self.failure
        if self.topic:
            output["NotificationConfig"] = {"SuccessTopic": self.topic, "ErrorTopic": self.topic}
        config: dict[str, Any] = {"OutputConfig": output}
        if self.max_concurrent is not None:
            config["ClientConfig"] = {"MaxConcurrentInvocationsPerInstance": self.max_concurrent}
        return config


def endpoint_mode(config: Mapping[str, Any] | None) -> str:
    """The mode a DescribeEndpointConfig answer stands for."""
    config = config or {}
    if config.get("AsyncInferenceConfig"):
        return ASYNC
    variants = config.get("ProductionVariants") or []
    if any(v.get("ServerlessConfig") for v in variants):
        return SERVERLESS
    return REALTIME


def mode_environment(mode: str, env: Mapping[str, str]) -> dict[str, str]:
    """The container settings a mode needs, under the user's own ``--env`` (which win).

    Serverless: one worker (the endpoint's memory holds one copy of the model, not one per
    CPU) and the 4 MB request limit, answered 413 with the contract's error object.
    """
    extra: dict[str, str] = {}
    if mode == SERVERLESS:
        extra["TWINNET_MAX_REQUEST_BYTES"] = str(SERVERLESS_REQUEST_BYTES)
        if "SAGEMAKER_MODEL_SERVER_WORKERS" not in env:
            extra["TWINNET_WORKERS"] = "1"
    return {**extra, **env}
