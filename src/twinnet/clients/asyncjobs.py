"""Requests to an asynchronous SageMaker endpoint: bodies and answers travel through S3.

:class:`AsyncInvoker` puts each request body in S3 (beside the endpoint's answers, under
``requests/``), calls ``InvokeEndpointAsync`` with its location, and waits for SageMaker to
write the answer (``OutputLocation``) or the failure (``FailureLocation``) that the call
named. Many requests are submitted before any is waited for, so a folder of queries
queues at once and the endpoint (or its autoscaling) sees the whole backlog.

The bytes are the contract's, exactly as ``/invocations`` takes them; a failure object
holding the contract's error object is read back as the same error a real-time call gives.
Request objects are deleted once their answer has been read; answers stay.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from twinnet.aws.modes import parse_s3_uri
from twinnet.aws.session import aws, describe_error, error_code
from twinnet.clients.remote import error_from_body
from twinnet.contract.errors import status_of
from twinnet.errors import TwinnetError

__all__ = ["AsyncInvoker", "Job", "Progress"]

#: ``progress(answered, total, elapsed_s)`` while waiting.
Progress = Callable[[int, int, float], None]
#: S3 and runtime calls in flight at once while submitting and looking for answers.
_THREADS = 8


def _quiet(answered: int, total: int, elapsed: float) -> None:
    """The default progress: say nothing."""


@dataclass(frozen=True)
class Job:
    """One submitted request: where its body is, and where its answer or failure will be."""

    inference_id: str
    request: str
    output: str
    failure: str | None


class AsyncInvoker:
    """Submit contract requests to an async endpoint and collect their answers from S3.

    Args:
        runtime: a ``sagemaker-runtime`` client; s3: an S3 client.
        endpoint: the endpoint's name.
        requests: ``s3://`` prefix for request bodies (the caller must be able to write it
            and the endpoint's role to read it).
        poll_s: seconds between looks at S3; timeout_s: how long to wait for all answers.
    """

    def __init__(
        self,
        runtime: Any,
        s3: Any,
        endpoint: str,
        requests: str,
        poll_s: float = 2.0,
        timeout_s: float = 900.0,
        progress: Progress | None = None,
    ) -> None:
        self.runtime, self.s3, self.endpoint = runtime, s3, endpoint
        self.bucket, prefix = parse_s3_uri(requests, "requests location")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.poll_s, self.timeout_s = poll_s, timeout_s
        self.progress = progress or _quiet
        #: Request objects that could not be deleted after their answer, and why.
        self.undeleted: list[str] = []

    def submit(self, body: bytes, content_type: str) -> Job:
        """Put ``body`` in S3 and queue it on the endpoint; returns where its answer will be."""
        key = f"{self.prefix}{uuid.uuid4().hex}"
        request = f"s3://{self.bucket}/{key}"
        # The body's type travels with the invocation (SageMaker hands it to the container);
        # the object itself is stored as plain bytes.
        with aws(f"upload the request to {request}"):
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        with aws(f"invoke endpoint {self.endpoint!r} asynchronously"):
            answer = self.runtime.invoke_endpoint_async(
                EndpointName=self.endpoint,
                InputLocation=request,
                ContentType=content_type,
                Accept="application/json",
            )
        return Job(
            inference_id=str(answer.get("InferenceId", "")),
            request=request,
            output=answer["OutputLocation"],
            failure=answer.get("FailureLocation"),
        )

    def submit_all(self, bodies: Sequence[tuple[bytes, str]]) -> list[Job]:
        """:meth:`submit` for many bodies, a few at a time (boto3 clients are thread-safe)."""
        with ThreadPoolExecutor(_THREADS) as pool:
            return list(pool.map(lambda item: self.submit(*item), bodies))

    def wait(self, jobs: Sequence[Job]) -> list[bytes | TwinnetError]:
        """Each job's answer bytes, or the error its failure object holds, in the jobs' order."""
        results: dict[int, bytes | TwinnetError] = {}
        start = time.monotonic()
        with ThreadPoolExecutor(_THREADS) as pool:
            while True:
                pending = [i for i in range(len(jobs)) if i not in results]
                looks = list(pool.map(self._look, [jobs[i] for i in pending]))
                for i, found in zip(pending, looks, strict=True):
                    if found is not None:
                        results[i] = found
                        self._forget(jobs[i])
                if self._waited(results, jobs, start):
                    return [results[i] for i in range(len(jobs))]
                time.sleep(self.poll_s)

    def _waited(self, results: dict[int, Any], jobs: Sequence[Job], start: float) -> bool:
        """Report progress; True once every job is answered, an error once time is up."""
        elapsed = time.monotonic() - start
        self.progress(len(results), len(jobs), elapsed)
        if len(results) == len(jobs):
            return True
        if elapsed > self.timeout_s:
            waiting = [jobs[i].output for i in range(len(jobs)) if i not in results]
            raise TwinnetError(
                f"endpoint {self.endpoint!r} answered {len(results)} of {len(jobs)} requests "
                f"in {self.timeout_s:.0f} s; the rest will appear at {', '.join(waiting[:3])}"
                f"{' ...' if len(waiting) > 3 else ''} (an async endpoint scaled to zero "
                "takes minutes to start)"
            )
        return False

    def _look(self, job: Job) -> bytes | TwinnetError | None:
        """The answer, the failure, or ``None`` while neither is written yet."""
        out = self._read(job.output)
        if out is not None:
            return out
        if job.failure:
            failed = self._read(job.failure)
            if failed is not None:
                return _failure(failed, self.endpoint)
        return None

    def _read(self, uri: str) -> bytes | None:
        """The object's bytes, or ``None`` while it does not exist (one GET, no HEAD first)."""
        from botocore.exceptions import ClientError

        bucket, key = parse_s3_uri(uri, "answer location")
        with aws(f"read {uri}"):
            try:
                return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise

    def _forget(self, job: Job) -> None:
        """Delete the request body once answered (best effort: an answer is never lost to it)."""
        bucket, key = parse_s3_uri(job.request, "request location")
        try:
            self.s3.delete_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            self.undeleted.append(f"{job.request} ({describe_error('delete', exc)})")


def _failure(raw: bytes, endpoint: str) -> TwinnetError:
    """A failure object: the contract's error object when the container wrote one."""
    where = f"endpoint {endpoint!r}"
    try:
        data = json.loads(raw.decode("utf-8"))
        code = data["error"]["code"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        text = " ".join(raw[:300].decode("utf-8", "replace").split()) or "no details"
        return TwinnetError(f"{where} failed the request: {text}")
    return error_from_body(status_of(code), raw, where)
