"""``twinnet invoke``: two images to a SageMaker endpoint, the verdict and CAM maps back.

The request body is :func:`twinnet.protocol.encode_multipart`'s, the same bytes the
TorchServe handler parses, and it is measured against SageMaker's 6 MB limit before any
connection is opened. The response is parsed as JSON by the client, never evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import TwinnetError
from ..protocol import MAX_REQUEST_BYTES, encode_multipart
from ..result import CompareResult

__all__ = ["read_image_file", "check_request", "invoke"]


def read_image_file(path: str | Path) -> bytes:
    """The raw bytes of an image file (decoding is the server's job)."""
    p = Path(path)
    if not p.is_file():
        raise TwinnetError(f"{p}: no such file")
    data = p.read_bytes()
    if not data:
        raise TwinnetError(f"{p}: empty file")
    return data


def check_request(
    left: bytes, right: bytes, cam: bool = False, limit: int = MAX_REQUEST_BYTES
) -> int:
    """Size of the request body ``invoke`` would send; a one-line error when over ``limit``.

    The whole multipart body counts (SageMaker measures the payload, headers of the parts
    included), so it is encoded exactly as it will be sent.
    """
    body, _ = encode_multipart(left, right, cam)
    size = len(body)
    if size > limit:
        raise TwinnetError(
            f"request of {size / 2**20:.1f} MiB is over SageMaker's {limit / 2**20:.0f} MiB "
            "payload limit; nothing was sent. Shrink the images (e.g. JPEG, longest side 1024 px)"
        )
    return size


def _check_endpoint(session: Any, endpoint: str) -> None:
    """Fail early, in one line, when the endpoint is missing or not serving yet.

    Callers allowed to invoke but not to describe endpoints skip the check (AccessDenied):
    InvokeEndpoint's own error then speaks.
    """
    from botocore.exceptions import ClientError

    from .sagemaker import _aws, _describe_endpoint, _error_code

    with _aws(f"describe endpoint {endpoint}"):
        try:
            desc = _describe_endpoint(session.client("sagemaker"), endpoint)
        except ClientError as exc:
            if _error_code(exc) in ("AccessDenied", "AccessDeniedException"):
                return
            raise
    if desc is None:
        raise TwinnetError(
            f"endpoint {endpoint!r} does not exist in {session.region_name}; "
            "`twinnet endpoints` lists the twinnet endpoints there"
        )
    if desc["EndpointStatus"] != "InService":
        raise TwinnetError(
            f"endpoint {endpoint!r} is {desc['EndpointStatus']}, not InService; "
            "wait for it (`twinnet endpoints`) and try again"
        )


def invoke(
    endpoint: str,
    left: str | Path,
    right: str | Path,
    cam: bool = False,
    region: str | None = None,
    profile: str | None = None,
) -> CompareResult:
    """Compare two image files on ``endpoint``; refuses oversized requests before sending."""
    from .sagemaker import _one_line, open_session, validate_endpoint_name

    validate_endpoint_name(endpoint)
    left_bytes, right_bytes = read_image_file(left), read_image_file(right)
    check_request(left_bytes, right_bytes, cam)
    session = open_session(region=region, profile=profile)
    _check_endpoint(session, endpoint)
    from ..client import SageMakerClient

    client = SageMakerClient(endpoint, region=session.region_name, session=session)
    try:
        return client.compare(left_bytes, right_bytes, cam=cam)
    except TwinnetError as exc:
        if "\n" in str(exc):  # e.g. an HTML error page quoted by a proxy: keep it to one line
            raise TwinnetError(_one_line(str(exc))) from None
        raise
