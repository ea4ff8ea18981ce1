"""AWS sessions, clients, and the one translation of AWS failures into one-line messages.

Every part of twinnet that talks to AWS (deploy, teardown, the endpoint listing, the
SageMaker client, the app) opens its clients and words its errors here, so a missing
credential, an expired token or a denied call reads the same wherever it happens.

Nothing here imports boto3 at module level: ``import twinnet.aws.session`` is cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twinnet.errors import TwinnetError

__all__ = [
    "ACCESS_DENIED_CODES",
    "CREDENTIAL_CODES",
    "NO_CREDENTIALS",
    "NO_REGION",
    "aws",
    "client",
    "default_region",
    "describe_error",
    "error_code",
    "new_session",
    "not_found",
    "one_line",
    "open_session",
]

#: Error codes with which AWS refuses the credentials themselves (not a permission).
CREDENTIAL_CODES = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidSignatureException",
    }
)
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException"})
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "ResourceNotFound"})
NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
    "AWS_PROFILE or --profile, or run `aws configure`"
)
NO_REGION = "no AWS region: pass --region or set AWS_DEFAULT_REGION"


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:  # pragma: no cover - boto3 is in the aws extra
        raise TwinnetError("boto3 is not installed: pip install 'twinnet[aws]'") from None
    return boto3


def new_session(region: str | None = None, profile: str | None = None) -> Any:
    """A boto3 session, resolved now from the current environment; credentials unchecked."""
    boto3 = _boto3()
    from botocore.exceptions import BotoCoreError

    try:
        return boto3.Session(profile_name=profile, region_name=region)
    except BotoCoreError as exc:
        raise TwinnetError(describe_error("read the AWS configuration", exc)) from None


def open_session(region: str | None = None, profile: str | None = None) -> Any:
    """A boto3 session that has a region and credentials, or a one-line error saying which is missing."""
    from botocore.exceptions import BotoCoreError

    session = new_session(region, profile)
    try:
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        raise TwinnetError(describe_error("read the AWS configuration", exc)) from None
    if not session.region_name:
        raise TwinnetError(NO_REGION)
    if credentials is None:
        raise TwinnetError(NO_CREDENTIALS)
    return session


def client(session: Any, service: str, region: str | None = None) -> Any:
    """A botocore client with the standard retry mode (backoff on throttling and 5xx)."""
    from botocore.config import Config
    from botocore.exceptions import NoRegionError

    try:
        return session.client(
            service, region_name=region or None, config=Config(retries={"mode": "standard"})
        )
    except NoRegionError:
        raise TwinnetError(NO_REGION) from None


def default_region(fallback: str = "us-east-1") -> str:
    """The region the AWS configuration names (environment or ``~/.aws/config``), else ``fallback``."""
    try:
        return _boto3().session.Session().region_name or fallback
    except Exception:  # no boto3, or an unreadable configuration: the user can type one
        return fallback


def one_line(text: object, limit: int = 300) -> str:
    """``text`` folded onto one line and cut to ``limit``; an HTML error page is named, not quoted."""
    text = " ".join(str(text).split())
    if text.lower().startswith(("<!doctype", "<html")):
        text = "the service returned an HTML error page"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ``ClientError`` (``""`` for anything else)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _error_text(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return one_line(response.get("Error", {}).get("Message", "") or exc)


def not_found(exc: BaseException) -> bool:
    """Whether AWS said the resource does not exist (each service says it its own way)."""
    code, message = error_code(exc), _error_text(exc)
    return code in _NOT_FOUND_CODES or (
        code == "ValidationException"
        and ("could not find" in message.lower() or "does not exist" in message)
    )


def describe_error(what: str, exc: BaseException) -> str:
    """The one-line message for an AWS failure while doing ``what`` (e.g. ``create model m``)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        CredentialRetrievalError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return NO_CREDENTIALS
    if isinstance(exc, CredentialRetrievalError):
        return f"{what}: cannot get AWS credentials ({one_line(exc)}); refresh them or pick another profile"
    if isinstance(exc, NoRegionError):
        return NO_REGION
    if isinstance(exc, ProfileNotFound):
        return f"{exc}; list profiles with `aws configure list-profiles`"
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return f"{what}: cannot reach AWS ({one_line(exc)}); check the network and the region"
    if isinstance(exc, ClientError):
        code, message = error_code(exc), _error_text(exc)
        if code in CREDENTIAL_CODES:
            return f"{what}: AWS rejected the credentials ({code}: {message}); refresh them or pick another profile"
        if code in ACCESS_DENIED_CODES:
            return f"{what}: access denied ({message}); see the IAM permissions in the deploy guide"
        return f"{what} failed: {code or 'error'}: {message}"
    return f"{what} failed: {one_line(exc) or type(exc).__name__}"


@contextmanager
def aws(what: str) -> Iterator[None]:
    """Turn boto3/botocore failures inside the block into a one-line :class:`TwinnetError`."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise TwinnetError(describe_error(what, exc)) from None
