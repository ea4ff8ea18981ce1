"""The HTTP side of the Ray Serve engine: routes, token check, capped body, request to row.

Ray Serve hands the ingress a starlette ``Request``; this module turns it into what
:class:`~twinnet.contract.service.TwinService` takes (a :class:`~twinnet.contract.service.Row`, as
TorchServe would build it) and answers everything that never reaches the model: ``/ping``,
unknown routes and model names (404), a missing or wrong token (401), a wrong method (405)
and a body over the contract's cap (413), each with the contract's error object.

The body is read only after the route and the token are known good, and never past the cap:
a declared ``Content-Length`` over it is refused before any byte is read, and a body without
one (chunked) is read until it passes the cap, then refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from twinnet.contract.protocol import (
    BATCH_HEADER,
    MAX_REQUEST_BYTES,
    ProtocolError,
    check_size,
    error_body,
    parse_multipart,
)
from twinnet.contract.service import Reply, Row

__all__ = ["BATCH_HEADER", "Gate", "answer", "key_digest", "read_body", "row_from"]

_JSON = "application/json"
#: What the ingress calls with one row: the batched service, answering ``(reply, batch size)``.
Batch = Callable[[Row], Awaitable[tuple[Reply, int]]]


def key_digest(key: str) -> str:
    """The SHA-256 of an inference key: what a replica holds instead of the key itself."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Gate:
    """Which model this server answers for, and the digest of its inference key (None: no auth)."""

    model: str
    key_sha256: str | None = None

    def route(self, path: str) -> str:
        """``ping``, ``predict``, ``unknown_model`` or ``unknown``, for a request path."""
        parts = [p for p in path.split("/") if p]
        if parts == ["ping"]:
            return "ping"
        if parts == ["invocations"]:
            return "predict"
        if parts[:1] == ["predictions"] and len(parts) in (2, 3):  # /predictions/NAME[/VERSION]
            return "predict" if parts[1] == self.model else "unknown_model"
        return "unknown"

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """True when auth is off, or the request carries ``Authorization: Bearer <key>``."""
        if self.key_sha256 is None:
            return True
        scheme, _, token = (headers.get("authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return hmac.compare_digest(key_digest(token.strip()), self.key_sha256)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(error_body(code, message), separators=(",", ":"))
    return Response(body, status_code=status, media_type=_JSON, headers=headers)


def _protocol_error(exc: ProtocolError) -> Response:
    body = json.dumps(exc.to_dict(), separators=(",", ":"))
    return Response(body, status_code=exc.status, media_type=_JSON)


async def read_body(request: Request, cap: int = MAX_REQUEST_BYTES) -> bytes:
    """The request body, refused with a 413 :class:`ProtocolError` as soon as it passes ``cap``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        check_size(int(declared), cap)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > cap:
            check_size(len(buf), cap)
    return bytes(buf)


def row_from(body: bytes, headers: Mapping[str, str], query: str = "") -> Row:
    """One request as TorchServe hands it to a handler: multipart fields by name, any other
    body as ``body``; query-string parameters (``format``, ``cam``, ``top_k``...) merged in,
    the request's own fields winning. Raises :class:`ProtocolError` on a broken multipart body."""
    fields: dict[str, Any] = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    ctype = headers.get("content-type") or ""
    if ctype.split(";", 1)[0].strip().lower() == "multipart/form-data":
        fields.update(parse_multipart(body, ctype))
    else:
        fields["body"] = body
    return Row(fields, dict(headers))


async def answer(request: Request, gate: Gate, batch: Batch) -> Response:
    """The response to one HTTP request; only a valid prediction request reaches ``batch``."""
    kind = gate.route(request.url.path)
    if kind == "ping":
        return Response('{"status":"Healthy"}', media_type=_JSON)
    if kind == "unknown":
        return _error(
            404,
            "not_found",
            f"no route {request.url.path}; the model answers POST /predictions/{gate.model} "
            "and POST /invocations",
        )
    if not gate.authorized(request.headers):
        return _error(
            401,
            "unauthorized",
            "missing or wrong inference token: send 'Authorization: Bearer <key>' (the key is "
            "in the server's key_file.json)",
            {"WWW-Authenticate": "Bearer"},
        )
    if kind == "unknown_model":
        asked = [p for p in request.url.path.split("/") if p][1]
        return _error(
            404,
            "not_found",
            f"no model {asked[:64]!r}; this server serves {gate.model!r} at "
            f"/predictions/{gate.model}",
        )
    if request.method != "POST":
        return _error(405, "method_not_allowed", "send the pair with POST", {"Allow": "POST"})
    try:
        body = await read_body(request)
        row = row_from(body, request.headers, request.url.query)
    except ProtocolError as exc:
        return _protocol_error(exc)
    reply, size = await batch(row)
    return Response(
        reply.body, status_code=reply.status, media_type=_JSON, headers={BATCH_HEADER: str(size)}
    )
