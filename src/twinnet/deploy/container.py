"""``twinnet container serve``: the SageMaker serving image's entrypoint.

SageMaker unpacks ``model.tar.gz`` into ``/opt/ml/model``, starts the image, sends
``GET /ping`` until it answers 200 and ``POST /invocations`` after that, on port
``SAGEMAKER_BIND_TO_PORT`` (8080 unless set). Stopping the endpoint sends SIGTERM.

This module finds the ``.mar``, applies settings from environment variables and runs
TorchServe with the serve stage's launcher (:func:`twinnet.serve.server.start` and
:func:`~twinnet.serve.server.stop`) until SIGTERM, so the container runs the same TorchServe
set-up as ``twinnet serve``, with token authorization off (SageMaker's health checks carry no token; IAM gates who may invoke). TorchServe listens
on loopback; SageMaker's port belongs to a small :class:`Gateway`, because TorchServe's own
``/ping`` reports healthy before the model has loaded.

Settings (environment variables; all optional):

=============================== ==============================================================
``SAGEMAKER_BIND_TO_PORT``      public port (default 8080)
``TWINNET_HOST``                public bind address (default 0.0.0.0)
``TWINNET_BATCH_SIZE``          TorchServe batch size
``TWINNET_MAX_BATCH_DELAY``     milliseconds TorchServe waits to fill a batch
``TWINNET_WORKERS``             worker processes (also ``SAGEMAKER_MODEL_SERVER_WORKERS``)
``TWINNET_THREADS``             torch threads per worker, or ``auto``
``TWINNET_RESPONSE_TIMEOUT``    seconds before TorchServe counts a batch as stuck (also
                                ``SAGEMAKER_MODEL_SERVER_TIMEOUT``)
``TWINNET_PRECISION``           ``auto``, ``bf16`` or ``fp32``
``TWINNET_STARTUP_TIMEOUT``     seconds to wait for the model to load (default 600)
``TWINNET_INVOCATION_TIMEOUT``  seconds before an invocation is answered 504 (default 55)
``TWINNET_GATEWAY_THREADS``     requests the gateway answers at once (default 32)
``TWINNET_MAX_CONNECTIONS``     client connections the gateway keeps open (default 500)
=============================== ==============================================================

The archive's ``model-config.yaml`` holds the values ``twinnet package`` chose; a setting
from the environment rewrites that file into a copy of the archive before TorchServe
starts, so TorchServe itself reads the new values.

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

import contextlib
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError, TransferEncodingNotImplemented
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher
from waitress.utilities import BadRequest, RequestEntityTooLarge

from ..errors import TwinnetError
from ..protocol import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from .package import find_mar

__all__ = [
    "CONFIG_ENTRY",
    "ContainerSettings",
    "settings_from_env",
    "apply_settings",
    "Gateway",
    "serve",
]

#: Where torch-model-archiver puts the ``--config-file`` inside the ``.mar``.
CONFIG_ENTRY = "model-config.yaml"
DEFAULT_PORT = 8080
DEFAULT_STARTUP_TIMEOUT = 600.0
#: Under SageMaker's 60 s invocation limit, so callers get the container's answer, not a timeout.
DEFAULT_INVOCATION_TIMEOUT = 55.0
#: Requests the gateway answers at once (each in-flight invocation holds one thread).
DEFAULT_GATEWAY_THREADS = 32
#: Open client connections; a stalled one holds no thread, only a socket.
DEFAULT_MAX_CONNECTIONS = 500
#: Read deadlines, in seconds: request headers, request body, idle keep-alive connection.
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_IDLE_TIMEOUT = 120.0

#: archive option -> environment variables, first one set wins.
_OPTION_ENV: dict[str, tuple[str, ...]] = {
    "batch_size": ("TWINNET_BATCH_SIZE",),
    "max_batch_delay": ("TWINNET_MAX_BATCH_DELAY",),
    "workers": ("TWINNET_WORKERS", "SAGEMAKER_MODEL_SERVER_WORKERS"),
    "threads": ("TWINNET_THREADS",),
    "response_timeout": ("TWINNET_RESPONSE_TIMEOUT", "SAGEMAKER_MODEL_SERVER_TIMEOUT"),
    "precision": ("TWINNET_PRECISION",),
}
_MINIMUM = {"batch_size": 1, "max_batch_delay": 0, "workers": 1, "response_timeout": 1}


@dataclass
class ContainerSettings:
    """What the container reads from its environment.

    Attributes:
        port: inference port (``SAGEMAKER_BIND_TO_PORT``).
        host: bind address.
        startup_timeout: seconds to wait for a READY worker before giving up.
        invocation_timeout: seconds one invocation may take before the container answers 504.
        gateway_threads: requests the gateway answers at once.
        max_connections: client connections the gateway keeps open at once.
        overrides: archive options to rewrite into ``model-config.yaml``.
    """

    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    invocation_timeout: float = DEFAULT_INVOCATION_TIMEOUT
    gateway_threads: int = DEFAULT_GATEWAY_THREADS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    overrides: dict[str, Any] = field(default_factory=dict)


def _int(environ: Mapping[str, str], var: str, minimum: int) -> int:
    text = environ[var].strip()
    if not re.fullmatch(r"\d+", text) or int(text) < minimum:
        raise TwinnetError(f"{var}={environ[var]!r}: expected a whole number >= {minimum}")
    return int(text)


def settings_from_env(environ: Mapping[str, str] | None = None) -> ContainerSettings:
    """Read and check every setting up front, so a typo stops the container with one line."""
    env = os.environ if environ is None else environ
    settings = ContainerSettings()
    if env.get("SAGEMAKER_BIND_TO_PORT", "").strip():
        settings.port = _int(env, "SAGEMAKER_BIND_TO_PORT", 1)
        if settings.port > 65535:
            raise TwinnetError(f"SAGEMAKER_BIND_TO_PORT={settings.port}: not a port number")
    settings.host = env.get("TWINNET_HOST", "").strip() or settings.host
    if env.get("TWINNET_STARTUP_TIMEOUT", "").strip():
        settings.startup_timeout = float(_int(env, "TWINNET_STARTUP_TIMEOUT", 1))
    if env.get("TWINNET_INVOCATION_TIMEOUT", "").strip():
        settings.invocation_timeout = float(_int(env, "TWINNET_INVOCATION_TIMEOUT", 1))
    if env.get("TWINNET_GATEWAY_THREADS", "").strip():
        settings.gateway_threads = _int(env, "TWINNET_GATEWAY_THREADS", 1)
    if env.get("TWINNET_MAX_CONNECTIONS", "").strip():
        settings.max_connections = _int(env, "TWINNET_MAX_CONNECTIONS", 1)
    for option, names in _OPTION_ENV.items():
        var = next((n for n in names if env.get(n, "").strip()), None)
        if var is None:
            continue
        if option == "precision":
            value: Any = env[var].strip().lower()
            if value not in ("auto", "bf16", "fp32"):
                raise TwinnetError(f"{var}={env[var]!r}: expected auto, bf16 or fp32")
        elif option == "threads":
            value = env[var].strip().lower()
            value = value if value == "auto" else _int(env, var, 1)
        else:
            value = _int(env, var, _MINIMUM[option])
        settings.overrides[option] = value
    return settings


def apply_settings(mar: Path, overrides: Mapping[str, Any], store: Path) -> Path:
    """A copy of ``mar`` in ``store`` whose ``model-config.yaml`` carries ``overrides``.

    The new config is built by the serve stage's :func:`~twinnet.serve.archive.model_config`
    from the archive's own values plus the overrides, so it is checked the same way.
    Entries are copied stored (uncompressed): TorchServe unpacks the archive once, and
    not recompressing the weights keeps start-up quick.
    """
    import yaml

    from ..serve.archive import model_config

    with zipfile.ZipFile(mar) as zin:
        try:
            current = yaml.safe_load(zin.read(CONFIG_ENTRY)) or {}
        except KeyError:
            raise TwinnetError(
                f"{mar.name} has no {CONFIG_ENTRY}; rebuild it with `twinnet package`"
            ) from None
        section = current.get("twinnet") or {}
        merged = {
            "batch_size": current.get("batchSize", 8),
            "max_batch_delay": current.get("maxBatchDelay", 10),
            "workers": current.get("minWorkers", section.get("workers")),
            "threads": section.get("threads", "auto"),
            "response_timeout": current.get("responseTimeout", 120),
            "precision": section.get("precision", "auto"),
            "cache_mb": section.get("cache_mb", 256),
            "plan": section.get("plan", "tuned"),
        }
        merged.update(overrides)
        config = model_config(**merged)
        for key in ("startupTimeout",):  # keep what the archive chose
            if key in current:
                config[key] = current[key]
        text = "# Rewritten by `twinnet container serve` from environment settings.\n"
        text += yaml.safe_dump(config, sort_keys=False)
        store.mkdir(parents=True, exist_ok=True)
        out = store / mar.name
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                if info.is_dir():
                    continue
                if info.filename == CONFIG_ENTRY:
                    zout.writestr(CONFIG_ENTRY, text)
                    continue
                with zin.open(info) as src, zout.open(info.filename, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    return out


#: Hop-by-hop headers (RFC 9110 7.6.1), and the framing the gateway sets itself: never forwarded.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
     "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
     "expect"}
)  # fmt: skip
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
_MAX_HEADER_BYTES = 64 * 1024
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
                or len(receiver.trailer) > _MAX_HEADER_BYTES
            ):
                self.error, self.completed = BadRequest("chunk-size line or trailer too long"), True
                return
        if size > self.adj.body_limit:
            self.error = RequestEntityTooLarge(f"over {self.adj.body_limit} bytes")
            self.completed = True


def _error_json(status: int, detail: str, adj: Any) -> bytes:
    """The contract's error object for an answer waitress gives before the app runs."""
    import json

    from ..protocol import error_body

    code = "internal_error" if status >= 500 else "bad_request"
    message = f"malformed request: {detail}"
    if status == 413:
        limit = adj.body_limit
        shown = f"{limit / 2**20:.0f} MiB" if limit >= 2**20 else f"{limit} byte"
        code = "payload_too_large"
        message = (
            f"request body is over the {shown} limit (SageMaker's real-time limit); "
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


class Gateway:
    """SageMaker's port: answers ``/ping`` itself and forwards ``/invocations`` to TorchServe.

    TorchServe's own ``/ping`` says "Healthy" as soon as its frontend is up, seconds before
    the worker has loaded the model (pytorch/serve#1679, #2434), so SageMaker would route
    traffic to a container that cannot answer yet. The gateway answers ``/ping`` with 200
    only when TorchServe's management API shows a READY worker, and 503 before that (or
    when no worker is READY any more). It also bounds each invocation by
    ``invocation_timeout`` so callers get an answer inside SageMaker's 60 s limit.

    It runs on waitress (see the module docstring): one event loop reads every connection,
    and only complete requests reach one of ``threads`` worker threads.

    Args:
        host: public bind address.
        port: public port (``SAGEMAKER_BIND_TO_PORT``).
        invocation_timeout: seconds an invocation may take before the gateway answers 504.
        max_request_bytes: larger bodies get 413 (the contract's 6 MiB unless given).
        threads: worker threads, so at most this many requests are answered at once.
        max_connections: open connections; past it, new ones wait in the listen backlog.
        header_timeout: seconds from a request's first byte (or from connecting) to the end
            of its headers; a slower client's connection is closed.
        body_timeout: seconds from the end of the headers to the end of the body.
        idle_timeout: seconds an idle keep-alive connection stays open.
    """

    def __init__(
        self,
        host: str,
        port: int,
        invocation_timeout: float = 55.0,
        max_request_bytes: int | None = None,
        *,
        threads: int = DEFAULT_GATEWAY_THREADS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.upstream: Any = None  # the ServerInfo, once the model is READY
        self.invocation_timeout = float(invocation_timeout)
        self.max_request_bytes = int(max_request_bytes or MAX_REQUEST_BYTES)
        self._ready_at = 0.0
        self._ready = False
        self._lock = threading.Lock()
        self._local = threading.local()
        self._map: dict[int, Any] = {}
        dispatcher = ThreadedTaskDispatcher()
        try:
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
                max_request_body_size=2 * self.max_request_bytes + _MAX_HEADER_BYTES,
                max_request_header_size=_MAX_HEADER_BYTES,
                # A whole answer fits the output buffer (spilled to a temporary file past
                # 1 MiB), so a client that reads slowly holds no worker thread.
                outbuf_high_watermark=MAX_RESPONSE_BYTES + 2**20,
                asyncore_use_poll=True,  # select() stops at file descriptor 1024
                clear_untrusted_proxy_headers=False,  # forward headers as they came
            )
            adj.body_limit = self.max_request_bytes
            adj.header_timeout, adj.body_timeout = float(header_timeout), float(body_timeout)
            self.server = _Server(self._app, map=self._map, dispatcher=dispatcher, adj=adj)
        except (OSError, ValueError) as exc:
            self._close_sockets()
            reason = getattr(exc, "strerror", None) or exc
            raise TwinnetError(f"cannot listen on {host}:{port}: {reason}") from None
        dispatcher.set_thread_count(int(threads))
        self.thread = threading.Thread(target=self.server.run, name="twinnet-gateway", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop accepting and close every connection; requests being forwarded get a second."""
        if self.thread.is_alive():
            self.server.trigger.pull_trigger(self._close_sockets)  # on the loop's own thread
            self.thread.join(timeout=5)
        else:
            self._close_sockets()
        self.server.task_dispatcher.shutdown(timeout=1)

    def _close_sockets(self) -> None:
        for dispatcher in list(self._map.values()):
            with contextlib.suppress(OSError):
                if isinstance(dispatcher, HTTPChannel):
                    dispatcher.handle_close()  # also frees its buffers
                else:
                    dispatcher.close()

    def healthy(self) -> bool:
        """A READY worker, as TorchServe's management API reports it (cached for one second)."""
        from ..serve.server import describe_model

        info = self.upstream
        if info is None:
            return False
        now = time.monotonic()
        with self._lock:
            if now - self._ready_at < 1.0:
                return self._ready
        try:
            ready = all(
                any(
                    w.get("status") == "READY"
                    for v in describe_model(info, m, 2.0)
                    for w in v.get("workers", [])
                )
                for m in info.models
            )
        except OSError:
            ready = False
        with self._lock:
            self._ready, self._ready_at = ready, now
        return ready

    def forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request to TorchServe on loopback, over a per-thread keep-alive connection."""
        import http.client

        info = self.upstream
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(
                    "127.0.0.1", info.port, timeout=self.invocation_timeout
                )
                self._local.conn = conn
            try:
                conn.request(method, path, body=body, headers=dict(headers))
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.getheaders(), data
            except (
                ConnectionError,
                http.client.RemoteDisconnected,
                http.client.CannotSendRequest,
            ) as exc:
                conn.close()
                self._local.conn = None
                if attempt:  # a stale keep-alive connection gets one retry on a fresh one
                    raise ConnectionError(str(exc)) from None
            except Exception:
                conn.close()
                self._local.conn = None
                raise
        raise ConnectionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """The WSGI application waitress calls with each complete request."""
        import http.client

        try:
            status, headers, body = self._answer(environ)
        except Exception as exc:  # the contract's 500, not waitress's plain-text one
            _say(f"gateway error: {exc.__class__.__name__}: {exc}")
            status, headers, body = _error(500, "internal_error", "internal error in the gateway")
        phrase = http.client.responses.get(status, "Unknown")
        start_response(f"{status} {phrase}", [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def _answer(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        method, route = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if route == "/ping" and method in ("GET", "HEAD"):
            if self.healthy():
                return 200, _JSON, b'{"status": "Healthy"}'
            return _error(503, "unavailable", "the model is loading or has no ready worker")
        if route == "/invocations" and method == "POST":
            return self._invoke(environ)
        if route in ("/ping", "/invocations"):
            verb = "GET /ping" if route == "/ping" else "POST /invocations"
            return _error(405, "bad_request", f"use {verb}")
        return _error(404, "not_found", f"no route {route}; use GET /ping or POST /invocations")

    def _invoke(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        import http.client

        length = int(environ.get("CONTENT_LENGTH") or 0)  # checked, or de-chunked and counted
        body = environ["wsgi.input"].read(length) if length else b""
        if self.upstream is None:
            return _error(
                503, "unavailable", "the model is still loading; retry after /ping answers 200"
            )
        query = environ.get("QUERY_STRING", "")
        path = "/invocations" + (f"?{query}" if query else "")
        try:
            status, headers, data = self.forward("POST", path, _request_headers(environ), body)
        except TimeoutError:
            return _error(504, "unavailable",
                          f"no answer within {self.invocation_timeout:.0f} s; retry later")  # fmt: skip
        except (OSError, http.client.HTTPException):
            return _error(503, "unavailable", "the model server is not reachable; retry later")
        return status, _response_headers(headers), data


_JSON = [("Content-Type", "application/json")]


def _error(status: int, code: str, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    import json

    from ..protocol import error_body

    return status, _JSON, json.dumps(error_body(code, message)).encode()


def _connection_tokens(value: str) -> set[str]:
    """Header names listed in a ``Connection`` header: hop-by-hop too (RFC 9110 7.6.1)."""
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def _request_headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The client's end-to-end headers, from the WSGI environ, for TorchServe."""
    dropped = _HOP_BY_HOP | _connection_tokens(environ.get("HTTP_CONNECTION", ""))
    headers = [("Content-Type", environ["CONTENT_TYPE"])] if environ.get("CONTENT_TYPE") else []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").title()
            if name.lower() not in dropped:
                headers.append((name, value))
    return headers


def _response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """TorchServe's end-to-end headers for the client, with a JSON type when it named none."""
    connection = ", ".join(v for k, v in headers if k.lower() == "connection")
    dropped = _HOP_BY_HOP | _connection_tokens(connection)
    kept = [(k, v) for k, v in headers if k.lower() not in dropped]
    return kept if any(k.lower() == "content-type" for k, _ in kept) else kept + _JSON


class _Stop(Exception):
    """SIGTERM (or SIGINT) arrived: stop TorchServe and leave."""


def _on_stop(signum: int, frame: Any) -> None:
    # Later signals are ignored: one stop is under way, and must not be interrupted.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Stop(signal.Signals(signum).name)


def _bind_description(host: str) -> str:
    """Say plainly who can reach the port (servers bind to loopback unless told otherwise)."""
    if host in ("0.0.0.0", "::", ""):
        return "all interfaces, as SageMaker requires"
    if host in ("127.0.0.1", "::1", "localhost"):
        return "loopback only"
    return "a non-loopback address"


def _say(message: str) -> None:
    print(f"twinnet container: {message}", file=sys.stderr, flush=True)


class _Follower(threading.Thread):
    """Copies TorchServe's output file to our stdout as it grows (SageMaker ships stdout to CloudWatch)."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="twinnet-log", daemon=True)
        self.path = path
        self.done = threading.Event()

    def run(self) -> None:
        out = getattr(sys.stdout, "buffer", None)
        handle = None
        try:
            while True:
                if handle is None and self.path.is_file():
                    handle = self.path.open("rb")
                chunk = handle.read(1 << 16) if handle is not None else b""
                if chunk and out is not None:
                    out.write(chunk)
                    out.flush()
                elif self.done.is_set():
                    return
                else:
                    time.sleep(0.2)
        except (OSError, ValueError):  # the file went away with the server: nothing left to copy
            return
        finally:
            if handle is not None:
                handle.close()

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


def serve(
    model_dir: str | os.PathLike = "/opt/ml/model", environ: Mapping[str, str] | None = None
) -> int:
    """Serve the ``.mar`` in ``model_dir`` on SageMaker's port until SIGTERM; returns the exit status.

    TorchServe listens on loopback only; the public port belongs to a :class:`Gateway`
    that is up at once (``/ping`` answers 503 while the model loads) and turns healthy once
    the serve stage's :func:`~twinnet.serve.server.start` reports a READY worker.

    SIGTERM is honoured at any moment, model loading included (SageMaker kills the container
    30 s after it): the signal handler interrupts whatever runs, and
    :func:`~twinnet.serve.server.stop` ends TorchServe's whole process group. It uses
    ``start``/``stop`` rather than ``run_foreground`` because the gateway, not TorchServe,
    owns the public port. TorchServe's output is copied to stdout.

    Returns:
        0 after a requested stop, 1 if TorchServe exited on its own.
    """
    from ..serve import server

    settings = settings_from_env(environ)
    mar = find_mar(model_dir)
    previous = {s: signal.signal(s, _on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    home = Path(tempfile.mkdtemp(prefix="twinnet-container-"))
    root = home / "serve"
    gateway: Gateway | None = None
    follower: _Follower | None = None
    inference = 0
    try:
        gateway = Gateway(
            settings.host,
            settings.port,
            settings.invocation_timeout,
            threads=settings.gateway_threads,
            max_connections=settings.max_connections,
        )
        gateway.start()
        where = _bind_description(settings.host)
        _say(
            f"listening on {settings.host}:{gateway.port} ({where}); "
            "/ping answers 503 until the model is ready"
        )
        if settings.overrides:
            shown = ", ".join(f"{k}={v}" for k, v in settings.overrides.items())
            _say(f"settings from the environment: {shown}")
            mar = apply_settings(mar, settings.overrides, home / "store")
        inference, management, metrics = server.free_loopback_ports(3, avoid={settings.port})
        follower = _Follower(server.instance_dir(inference, root) / "torchserve.out")
        follower.start()
        info = server.start(
            mar,
            host="127.0.0.1",
            port=inference,
            management_port=management,
            metrics_port=metrics,
            auth=False,
            root=root,
            timeout=settings.startup_timeout,
        )
        # Said first, so the log line is out before /ping can answer 200.
        _say(f"model {', '.join(info.models)} ready: /ping and /invocations on port {gateway.port}")
        gateway.upstream = info
        while info.alive():
            time.sleep(0.2)
        _say("TorchServe exited on its own; stopping")
        return 1
    except _Stop as stop:
        _say(f"{stop}: stopping TorchServe")
        return 0
    finally:
        for sig in previous:  # nothing may interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        try:
            if inference:
                server.stop(port=inference, root=root, timeout=20.0)
            if gateway is not None:
                gateway.close()
            if follower is not None:
                follower.stop()
            shutil.rmtree(home, ignore_errors=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
