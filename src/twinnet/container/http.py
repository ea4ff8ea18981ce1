"""The container gateway's HTTP/1.1 server: waitress, strict about framing, with deadlines.

:func:`make_server` gives :class:`~twinnet.container.gateway.Gateway` a waitress server that
calls a WSGI application only with complete, unambiguously framed requests.

The gateway's HTTP server is waitress (3.x), not the standard library's ``http.server``:

* Reading: one event loop reads every connection and hands only complete requests (body
  buffered, to a temporary file past 512 KiB) to a fixed pool of worker threads, so a
  client that stalls mid-request holds a socket, never a thread. ``http.server`` gives
  each connection a thread and has no read timeout.
* Framing: waitress takes ``Content-Length`` only as digits, decodes chunked bodies
  strictly, refuses transfer codings other than chunked and caps header and body size
  (for chunked bodies, framing included, while they are read). What it still accepts, the
  gateway refuses with 400 and a closed connection before waitress reads the body:
  ``Content-Length`` together with ``Transfer-Encoding``, ``Transfer-Encoding`` given twice
  or on HTTP/1.0, and folded header lines (RFC 9112 sections 5.2 and 6). It also holds a
  chunked body's decoded size to the cap as it arrives (413), and bounds chunk-size lines.
* Limits: ``connection_limit`` bounds open connections and ``channel_timeout`` closes idle
  ones; waitress has no deadline for a request that trickles in, so the gateway adds one
  for the headers (10 s) and one for the body (30 s) and closes the connection past them.
* Errors: waitress's early answers (400, 413, 431) carry the contract's error object.

uvicorn (h11 or httptools) was the other candidate: it has no deadline for receiving a
request either (its keep-alive timer restarts with every byte), caps no body size, and
would bring an ASGI stack for two routes. waitress is pure Python with no dependencies.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from typing import Any

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError, TransferEncodingNotImplemented
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.utilities import BadRequest, RequestEntityTooLarge

from twinnet.contract.protocol import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, error_body

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "MAX_HEADER_BYTES",
    "make_server",
]

#: Read deadlines, in seconds: request headers, request body, idle keep-alive connection.
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_IDLE_TIMEOUT = 120.0

_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
MAX_HEADER_BYTES = 64 * 1024
_MAX_CHUNK_LINE = 1024


def _framing_error(head: bytes) -> str | None:
    """Why a request head's framing is ambiguous (RFC 9112 section 6), or ``None`` if it is not.

    The body's length must come from exactly one plain decimal ``Content-Length`` or from one
    ``Transfer-Encoding: chunked`` (HTTP/1.1 only), never both: two parsers reading the same
    bytes differently is how requests are smuggled. Folded header lines are refused too,
    since a folded ``Transfer-Encoding`` reads differently to different parsers.
    """
    request_line, _, block = head.partition(b"\r\n")
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for line in block.split(b"\r\n") if block else []:
        if line[:1] in (b" ", b"\t"):
            return "folded header lines are not accepted"
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"content-length":
            lengths.append(value.strip(b" \t"))
        elif name == b"transfer-encoding":
            codings.append(value.strip(b" \t"))
    if codings:
        if lengths:
            return "Content-Length and Transfer-Encoding together"
        if len(codings) > 1 or codings[0].lower() != b"chunked":
            return "Transfer-Encoding must be one 'chunked'"
        if not request_line.endswith(b"HTTP/1.1"):
            return "Transfer-Encoding needs HTTP/1.1"
    if len(lengths) > 1:
        return "more than one Content-Length"
    if lengths and not _CONTENT_LENGTH.fullmatch(lengths[0]):
        return "Content-Length must be a non-negative decimal number"
    return None


class _Adjustments(Adjustments):
    """waitress's settings, plus the gateway's own body cap and read deadlines (seconds)."""

    body_limit = MAX_REQUEST_BYTES
    header_timeout = DEFAULT_HEADER_TIMEOUT
    body_timeout = DEFAULT_BODY_TIMEOUT


class _RequestParser(HTTPRequestParser):
    """waitress's request parser, strict about framing and clocked for the read deadlines."""

    def __init__(self, adj: _Adjustments) -> None:
        super().__init__(adj)
        self.started = time.monotonic()  # the request's first byte
        self.head_done: float | None = None

    def parse_header(self, header_plus: bytes) -> None:
        problem = _framing_error(header_plus)
        try:
            super().parse_header(header_plus)  # first, so the answer has the request's version
        except TransferEncodingNotImplemented:
            problem = problem or "Transfer-Encoding must be one 'chunked'"
        if problem:
            raise ParsingError(problem)  # waitress answers 400 and closes the connection

    def received(self, data: bytes) -> int:
        consumed = super().received(data)
        if self.headers_finished and self.head_done is None:
            self.head_done = time.monotonic()
        if self.error is None and self.headers_finished:
            self._check_body()
        return consumed

    def _check_body(self) -> None:
        """The body cap, on the declared length before any of the body is read, and on the
        decoded size of a chunked body as it arrives (waitress's own cap counts chunk framing
        and is only a backstop); chunk-size lines and trailers are bounded too."""
        receiver = self.body_rcv
        size = self.content_length
        if self.chunked and receiver is not None:
            size = len(receiver)
            if (
                len(receiver.control_line) > _MAX_CHUNK_LINE
                or len(receiver.trailer) > MAX_HEADER_BYTES
            ):
                self.error, self.completed = BadRequest("chunk-size line or trailer too long"), True
                return
        if size > self.adj.body_limit:
            self.error = RequestEntityTooLarge(f"over {self.adj.body_limit} bytes")
            self.completed = True


def _error_json(status: int, detail: str, adj: Any) -> bytes:
    """The contract's error object for an answer waitress gives before the app runs."""
    code = "internal_error" if status >= 500 else "bad_request"
    message = f"malformed request: {detail}"
    if status == 413:
        limit = adj.body_limit
        shown = f"{limit / 2**20:.0f} MiB" if limit >= 2**20 else f"{limit} byte"
        code = "payload_too_large"
        message = (
            f"request body is over this endpoint's {shown} limit; "
            "send smaller images (e.g. JPEG at 1024 px)"
        )
    elif status == 431:
        message = f"request headers over {adj.max_request_header_size} bytes"
    elif status >= 500:
        message = "the gateway failed to read the request"
    return json.dumps(error_body(code, message)).encode()


class _ErrorTask(ErrorTask):
    """waitress's early answers (400, 413, 431) as the contract's error object."""

    def execute(self) -> None:
        error = self.request.error
        body = _error_json(error.code, str(error.body), self.channel.adj)
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    """One client connection, with read deadlines on top of waitress's idle timeout."""

    parser_class = _RequestParser
    error_task_class = _ErrorTask
    resumed = 0.0  # when the last request's answer was done (reading pauses while it runs)

    def service(self) -> None:
        try:
            super().service()
        finally:
            self.resumed = time.monotonic()

    def overdue(self, now: float) -> bool:
        """Past a read deadline: headers slower than ``header_timeout`` (from the request's
        first byte, or from connecting when nothing came), or a body slower than ``body_timeout``."""
        if self.requests:
            return False  # an answer is being made; nothing is read meanwhile
        adj, request = self.adj, self.request
        if request is None:
            fresh = self.last_activity == self.creation_time  # nothing received or sent yet
            return fresh and time.time() - self.creation_time > adj.header_timeout
        if request.completed:
            return False
        if request.head_done is None:
            return now - max(request.started, self.resumed) > adj.header_timeout
        return now - max(request.head_done, self.resumed) > adj.body_timeout


class _Server(TcpWSGIServer):
    """waitress's server with the gateway's channel; checks the deadlines once a second."""

    channel_class = _Channel

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # idle keep-alive connections
        clock = time.monotonic()
        for channel in list(self.active_channels.values()):
            if channel.overdue(clock):
                channel.will_close = True


def make_server(
    app: Callable[..., Any],
    socket_map: dict[int, Any],
    host: str,
    port: int,
    threads: int,
    max_connections: int,
    max_request_bytes: int,
    header_timeout: float,
    body_timeout: float,
    idle_timeout: float,
) -> TcpWSGIServer:
    """A waitress server for ``app`` on ``host:port`` (not yet running: call its ``run``).

    ``socket_map`` receives its sockets, so that the caller can close them all. Raises
    OSError or ValueError when it cannot listen.
    """
    dispatcher = ThreadedTaskDispatcher()
    adj = _Adjustments(
        host=host,
        port=int(port),
        ident="twinnet",
        threads=int(threads),
        connection_limit=int(max_connections),
        channel_timeout=max(1, math.ceil(idle_timeout)),
        cleanup_interval=1,
        # Raw bytes, chunk framing included: a backstop; _RequestParser holds the
        # body itself to max_request_bytes.
        max_request_body_size=2 * max_request_bytes + MAX_HEADER_BYTES,
        max_request_header_size=MAX_HEADER_BYTES,
        # A whole answer fits the output buffer (spilled to a temporary file past
        # 1 MiB), so a client that reads slowly holds no worker thread.
        outbuf_high_watermark=MAX_RESPONSE_BYTES + 2**20,
        asyncore_use_poll=True,  # select() stops at file descriptor 1024
        clear_untrusted_proxy_headers=False,  # forward headers as they came
    )
    adj.body_limit = int(max_request_bytes)
    adj.header_timeout, adj.body_timeout = float(header_timeout), float(body_timeout)
    server = _Server(app, map=socket_map, dispatcher=dispatcher, adj=adj)
    dispatcher.set_thread_count(int(threads))
    return server
