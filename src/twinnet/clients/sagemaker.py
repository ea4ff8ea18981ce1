"""The client of a SageMaker endpoint: the same request bytes as over HTTP, through
``InvokeEndpoint`` (``twinnet compare --endpoint``, ``twinnet invoke``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twinnet.aws.endpoints import missing_endpoint, not_in_service, require_in_service
from twinnet.aws.resources import validate_endpoint_name
from twinnet.aws.session import client, describe_error, new_session
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
    real-time endpoint (``sagemaker-runtime``).

    Before its first request the client checks that the endpoint exists and is InService,
    so a typo or an endpoint still being created is one clear line, not a runtime error.

    Args:
        endpoint: the endpoint's name.
        region: AWS region; default from the AWS configuration (``AWS_DEFAULT_REGION``...).
            ``AWS_ENDPOINT_URL`` points the client elsewhere (e.g. a moto server).
        session: a ``boto3.Session``; default a new one, for ``profile``.
        profile: AWS profile from ``~/.aws`` when no session is given.
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
    ) -> None:

        if not endpoint:
            raise TwinnetError("an endpoint name is required")
        self.endpoint = validate_endpoint_name(endpoint)
        # A fresh session per client: credentials are resolved now, from the current
        # environment, not from whatever boto3's process-wide default session cached.
        self._session = session if session is not None else new_session(profile=profile)
        self._client = client(self._session, "sagemaker-runtime", region)
        self.region = self._client.meta.region_name
        self._checked = False

    def __repr__(self) -> str:
        return f"SageMakerClient({self.endpoint!r}, region={self.region!r})"

    def compare(self, left: ImageSource, right: ImageSource, cam: bool = False) -> CompareResult:
        """Invoke the endpoint with one pair; returns its verdict."""
        raw = self._invoke(*prepare_body(left, right, cam))
        return parse_result(raw, f"endpoint {self.endpoint!r}")

    def identify(self, query: ImageSource, top_k: int = DEFAULT_TOP_K) -> Identification:
        """Which gallery class does ``query`` show? Needs a model packaged with ``--index``."""
        raw = self._invoke(*prepare_identify_body(query, top_k))
        return parse_identification(raw, f"endpoint {self.endpoint!r}")

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

    def _check_endpoint(self) -> None:
        """Once per client: the endpoint exists and is InService."""
        if self._checked:
            return

        require_in_service(
            client(self._session, "sagemaker", self.region), self.endpoint, self.region
        )
        self._checked = True


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
