"""The client of a SageMaker endpoint: the same request bytes as over HTTP, through
``InvokeEndpoint`` (real-time and serverless) or ``InvokeEndpointAsync`` and S3 (async);
``twinnet compare --endpoint``, ``twinnet invoke``, ``identify --endpoint``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from twinnet.aws.endpoints import Facts, missing_endpoint, not_in_service, require_in_service
from twinnet.aws.modes import ASYNC, AsyncOutput
from twinnet.aws.resources import validate_endpoint_name
from twinnet.aws.session import client, describe_error, new_session
from twinnet.clients.asyncjobs import AsyncInvoker, Job, Progress
from twinnet.clients.remote import (
    error_from_body,
    parse_identification,
    parse_result,
    prepare_body,
    prepare_identify_body,
)
from twinnet.contract.protocol import DEFAULT_TOP_K
from twinnet.core.imaging import ImageSource
from twinnet.core.result import CompareResult
from twinnet.errors import TwinnetError

if TYPE_CHECKING:
    from twinnet.index import Identification

__all__ = ["SageMakerClient"]


class SageMakerClient:
    """Compare images (and identify them, when packaged with an index) with a SageMaker
    endpoint in any mode (``sagemaker-runtime``).

    Before its first request the client checks that the endpoint exists and is InService,
    and reads its mode from its endpoint config, so a typo or an endpoint still being
    created is one clear line, not a runtime error. Real-time and serverless endpoints are
    called with ``InvokeEndpoint``; an async endpoint gets each body through S3 (under
    its answers' prefix, ``requests/``) and ``InvokeEndpointAsync``, and the client waits
    for the answer SageMaker writes (:class:`~twinnet.clients.asyncjobs.AsyncInvoker`).
    ``compare_many`` and ``identify_many`` queue every request before waiting for any.

    Args:
        endpoint: the endpoint's name.
        region: AWS region; default from the AWS configuration (``AWS_DEFAULT_REGION``...).
            ``AWS_ENDPOINT_URL`` points the client elsewhere (e.g. a moto server).
        session: a ``boto3.Session``; default a new one, for ``profile``.
        profile: AWS profile from ``~/.aws`` when no session is given.
        progress: ``progress(answered, total, elapsed_s)`` while waiting on an async endpoint.
        poll_s, timeout_s: how often to look for async answers, and for how long.
    """

    #: An endpoint does not send its spec, and has no embedding search (see ``backends.Backend``).
    spec = None
    search = None

    def __init__(
        self,
        endpoint: str,
        region: str | None = None,
        session: Any = None,
        profile: str | None = None,
        progress: Progress | None = None,
        poll_s: float = 2.0,
        timeout_s: float = 900.0,
    ) -> None:
        if not endpoint:
            raise TwinnetError("an endpoint name is required")
        self.endpoint = validate_endpoint_name(endpoint)
        # A fresh session per client: credentials are resolved now, from the current
        # environment, not from whatever boto3's process-wide default session cached.
        self._session = session if session is not None else new_session(profile=profile)
        self._client = client(self._session, "sagemaker-runtime", region)
        self.region = self._client.meta.region_name
        self._facts: Facts | None = None
        self._progress, self._poll_s, self._timeout_s = progress, poll_s, timeout_s
        self._async: AsyncInvoker | None = None

    def __repr__(self) -> str:
        return f"SageMakerClient({self.endpoint!r}, region={self.region!r})"

    @property
    def mode(self) -> str:
        """``realtime``, ``serverless`` or ``async``, as the endpoint's config says."""
        return self._check_endpoint().mode

    def compare(self, left: ImageSource, right: ImageSource, cam: bool = False) -> CompareResult:
        """Invoke the endpoint with one pair; returns its verdict."""
        return self.compare_many([(left, right)], cam=cam)[0]

    def identify(self, query: ImageSource, top_k: int = DEFAULT_TOP_K) -> Identification:
        """Which gallery class does ``query`` show? Needs a model packaged with ``--index``."""
        return self.identify_many([query], top_k=top_k)[0]

    def compare_many(
        self, pairs: Iterable[tuple[ImageSource, ImageSource]], cam: bool = False
    ) -> list[CompareResult]:
        """Verdicts for many pairs; an async endpoint gets them all queued at once."""
        bodies = [prepare_body(left, right, cam) for left, right in pairs]
        where = f"endpoint {self.endpoint!r}"
        return [parse_result(raw, where) for raw in self._invoke_many(bodies)]

    def identify_many(
        self, queries: Iterable[ImageSource], top_k: int = DEFAULT_TOP_K
    ) -> list[Identification]:
        """Identifications of many queries, in order; queued at once on an async endpoint."""
        bodies = [prepare_identify_body(query, top_k) for query in queries]
        where = f"endpoint {self.endpoint!r}"
        return [parse_identification(raw, where) for raw in self._invoke_many(bodies)]

    def submit_compare(self, left: ImageSource, right: ImageSource, cam: bool = False) -> Job:
        """Queue one pair on an async endpoint without waiting; returns where the answer goes."""
        return self._invoker(required=True).submit(*prepare_body(left, right, cam))

    def _invoke_many(self, bodies: Sequence[tuple[bytes, str]]) -> list[bytes]:
        invoker = self._invoker()
        if invoker is None:
            return [self._invoke(body, content_type) for body, content_type in bodies]
        answers = invoker.wait(invoker.submit_all(bodies))
        for answer in answers:
            if isinstance(answer, TwinnetError):
                raise answer
        return [a for a in answers if isinstance(a, bytes)]

    def _invoker(self, required: bool = False) -> AsyncInvoker | None:
        """The async invoker when the endpoint is async (``required``: an error otherwise)."""
        facts = self._check_endpoint()
        if facts.mode != ASYNC:
            if required:
                raise TwinnetError(
                    f"endpoint {self.endpoint!r} is {facts.mode}, not async: it answers directly"
                )
            return None
        if self._async is None:
            if not facts.output:
                raise TwinnetError(f"async endpoint {self.endpoint!r} names no S3 output path")
            self._async = AsyncInvoker(
                self._client, client(self._session, "s3", self.region), self.endpoint,
                AsyncOutput(facts.output).requests, poll_s=self._poll_s,
                timeout_s=self._timeout_s, progress=self._progress,
            )  # fmt: skip
        return self._async

    def _invoke(self, body: bytes, content_type: str) -> bytes:
        """InvokeEndpoint with one body; the answer's bytes, or a TwinnetError."""
        from botocore.exceptions import BotoCoreError, ClientError

        self._check_endpoint()
        try:
            resp = self._client.invoke_endpoint(
                EndpointName=self.endpoint,
                ContentType=content_type,
                Accept="application/json",
                Body=body,
            )
        except ClientError as exc:
            raise _sagemaker_error(exc, self.endpoint, self.region) from None
        except BotoCoreError as exc:
            raise TwinnetError(describe_error(f"invoke endpoint {self.endpoint!r}", exc)) from None
        return resp["Body"].read()

    def _check_endpoint(self) -> Facts:
        """Once per client: the endpoint exists and is InService; its mode."""
        if self._facts is None:
            self._facts = require_in_service(
                client(self._session, "sagemaker", self.region), self.endpoint, self.region
            )
        return self._facts


def _sagemaker_error(exc: Any, endpoint: str, region: str | None) -> TwinnetError:
    """InvokeEndpoint's refusal: the container's own error object, else AWS's, in twinnet's words."""

    where = f"endpoint {endpoint!r}"
    err = exc.response.get("Error", {})
    code, message = err.get("Code", ""), " ".join(str(err.get("Message", "")).split())
    if code == "ModelError":  # the container answered non-2xx: its body is our error object
        status = int(exc.response.get("OriginalStatusCode") or 500)
        original = exc.response.get("OriginalMessage") or ""
        return error_from_body(status, original.encode("utf-8"), where)
    lowered = message.lower()
    if "not found" in lowered or "could not find" in lowered:
        return TwinnetError(missing_endpoint(endpoint, region))
    if "not in service" in lowered or "creating" in lowered or "updating" in lowered:
        return TwinnetError(not_in_service(endpoint, message))
    return TwinnetError(describe_error(f"invoke {where}", exc))
