"""The contract's errors: one exception, its HTTP status, and its JSON error object.

A request that breaks the contract raises :class:`ProtocolError`; servers render it as
``{"error": {"code", "field", "message"}}`` with the status of its code. Any other failure
becomes a bare 500 (:func:`error_from_exception`): internal details stay in the server log.
"""

from __future__ import annotations

from typing import Any

from twinnet.errors import ImageError, TwinnetError

__all__ = ["ProtocolError", "error_body", "error_from_exception", "status_of"]

_STATUS_OF = {
    "bad_request": 400,
    "missing_field": 400,
    "invalid_field": 400,
    "invalid_image": 400,
    "unauthorized": 401,
    "not_found": 404,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "internal_error": 500,
    "unavailable": 503,
}


def status_of(code: str) -> int:
    """The HTTP status that goes with an error ``code`` (500 for one this contract lacks)."""
    return _STATUS_OF.get(str(code), 500)


class ProtocolError(TwinnetError):
    """A request that breaks the contract; carries its HTTP status and error object.

    Attributes:
        code: machine-readable error code (``invalid_image``, ``missing_field``, ...).
        field: the request field at fault, or ``None``.
        status: the HTTP status that goes with ``code``.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.status = _STATUS_OF.get(code, 400)

    @property
    def message(self) -> str:
        return str(self)

    def to_dict(self) -> dict[str, Any]:
        """The contract's error object."""
        return error_body(self.code, self.message, self.field)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """``{"error": {"code", "field", "message"}}``."""
    return {"error": {"code": code, "field": field, "message": message}}


def error_from_exception(exc: BaseException) -> ProtocolError:
    """Map any failure to a :class:`ProtocolError`; unknown exceptions become a bare 500."""
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, ImageError):
        return ProtocolError("invalid_image", str(exc), getattr(exc, "field", None))
    if isinstance(exc, TwinnetError):
        return ProtocolError("bad_request", str(exc))
    # Internal details stay in the server log, not in the response.
    return ProtocolError("internal_error", f"internal error ({exc.__class__.__name__})")
