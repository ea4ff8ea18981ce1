"""The SageMaker container's public port: ``/ping`` answered here, ``/invocations`` forwarded.

TorchServe listens on loopback inside the container; the :class:`Gateway` owns the port
SageMaker calls. Requests are read by a strict waitress server (:mod:`.gateway_http`) and
forwarded to TorchServe over urllib3, the HTTP stack under ``requests`` that the clients use.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import urllib3
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry
from waitress.channel import HTTPChannel

from twinnet.container.http import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    make_server,
)
from twinnet.contract.protocol import MAX_REQUEST_BYTES, error_body
from twinnet.engines.health import model_ready
from twinnet.errors import TwinnetError

__all__ = [
    "DEFAULT_GATEWAY_THREADS",
    "DEFAULT_INVOCATION_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "Gateway",
    "say",
]

#: Under SageMaker's 60 s invocation limit, so callers get the container's answer, not a timeout.
DEFAULT_INVOCATION_TIMEOUT = 55.0
#: Requests the gateway answers at once (each in-flight invocation holds one thread).
DEFAULT_GATEWAY_THREADS = 32
#: Open client connections; a stalled one holds no thread, only a socket.
DEFAULT_MAX_CONNECTIONS = 500
#: Hop-by-hop headers (RFC 9110 7.6.1), and the framing the gateway sets itself: never forwarded.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
     "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
     "expect"}
)  # fmt: skip
_JSON = [("Content-Type", "application/json")]

Answer = tuple[int, list[tuple[str, str]], bytes]


def say(message: str) -> None:
    """One line of the container's own log (stderr; SageMaker ships it to CloudWatch)."""
    print(f"twinnet container: {message}", file=sys.stderr, flush=True)


class _RetryBrokenConnection(Retry):
    """urllib3's retry, never after a read timeout.

    A pooled keep-alive connection that TorchServe has closed is replaced by a fresh one
    (urllib3 checks a connection before reusing it, and a connection that breaks while the
    request goes out is retried once). Inference has no side effects, so sending the same
    request again is safe. A read timeout is not retried: the model is slow, not gone, and
    a second wait would overrun SageMaker's 60 s.
    """

    def increment(self, *args: Any, **kwargs: Any) -> Retry:
        if isinstance(kwargs.get("error"), ReadTimeoutError):
            raise kwargs["error"]
        return super().increment(*args, **kwargs)


_RETRY = _RetryBrokenConnection(
    total=1, connect=1, read=1, other=0, status=0, redirect=False, allowed_methods=None,
    raise_on_status=False,
)  # fmt: skip


class Gateway:
    """SageMaker's port: answers ``/ping`` itself and forwards ``/invocations`` to TorchServe.

    TorchServe's own ``/ping`` says "Healthy" as soon as its frontend is up, seconds before
    the worker has loaded the model (pytorch/serve#1679, #2434), so SageMaker would route
    traffic to a container that cannot answer yet. The gateway answers ``/ping`` with 200
    only when every model is ready by :func:`twinnet.engines.health.model_ready` (a READY
    worker, as TorchServe's management API reports it; the same test ``twinnet serve``
    waits for), and 503 before that or when no worker is READY any more. It also bounds
    each invocation by ``invocation_timeout`` so callers get an answer inside SageMaker's
    60 s limit.

    It runs on waitress (:mod:`.gateway_http`): one event loop reads every connection, and
    only complete requests reach one of ``threads`` worker threads, each of which forwards
    over a pool of keep-alive connections to TorchServe.

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
        invocation_timeout: float = DEFAULT_INVOCATION_TIMEOUT,
        max_request_bytes: int | None = None,
        *,
        threads: int = DEFAULT_GATEWAY_THREADS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.invocation_timeout = float(invocation_timeout)
        self.max_request_bytes = int(max_request_bytes or MAX_REQUEST_BYTES)
        self.threads = int(threads)
        self._upstream: Any = None
        self._pool: urllib3.HTTPConnectionPool | None = None
        self._ready_at = 0.0
        self._ready = False
        self._lock = threading.Lock()
        self._map: dict[int, Any] = {}
        try:
            self.server = make_server(
                self._app, self._map, host, port, self.threads, max_connections,
                self.max_request_bytes, header_timeout, body_timeout, idle_timeout,
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            self._close_sockets()
            reason = getattr(exc, "strerror", None) or exc
            raise TwinnetError(f"cannot listen on {host}:{port}: {reason}") from None
        self.thread = threading.Thread(target=self.server.run, name="twinnet-gateway", daemon=True)

    @property
    def upstream(self) -> Any:
        """The :class:`~twinnet.engines.state.ServerInfo` of TorchServe, once it is ready."""
        return self._upstream

    @upstream.setter
    def upstream(self, info: Any) -> None:
        pool = None
        if info is not None:
            pool = urllib3.HTTPConnectionPool(
                "127.0.0.1", int(info.port), maxsize=self.threads, block=False,
                timeout=urllib3.Timeout(connect=self.invocation_timeout,
                                        read=self.invocation_timeout),
                retries=_RETRY,
            )  # fmt: skip
        old, self._pool, self._upstream = self._pool, pool, info
        if old is not None:
            old.close()

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
        if self._pool is not None:
            self._pool.close()

    def _close_sockets(self) -> None:
        for dispatcher in list(self._map.values()):
            with contextlib.suppress(OSError):
                if isinstance(dispatcher, HTTPChannel):
                    dispatcher.handle_close()  # also frees its buffers
                else:
                    dispatcher.close()

    def healthy(self) -> bool:
        """Every model ready (:func:`~twinnet.engines.health.model_ready`), cached for a second."""
        info = self.upstream
        if info is None:
            return False
        now = time.monotonic()
        with self._lock:
            if now - self._ready_at < 1.0:
                return self._ready
        ready = all(model_ready(info, m) for m in info.models)
        with self._lock:
            self._ready, self._ready_at = ready, now
        return ready

    def forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> Answer:
        """One request to TorchServe on loopback, over the pool's keep-alive connections.

        Raises urllib3's ReadTimeoutError past ``invocation_timeout``, and another
        ``urllib3.exceptions.HTTPError`` when TorchServe cannot be reached.
        """
        pool = self._pool
        if pool is None:
            raise urllib3.exceptions.HTTPError("no model server yet")
        resp = pool.urlopen(
            method, path, body=body, headers=dict(headers), redirect=False,
            assert_same_host=False, preload_content=True,
        )  # fmt: skip
        return resp.status, list(resp.headers.items()), resp.data

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """The WSGI application waitress calls with each complete request."""
        try:
            status, headers, body = self._answer(environ)
        except Exception as exc:  # the contract's 500, not waitress's plain-text one
            say(f"gateway error: {exc.__class__.__name__}: {exc}")
            status, headers, body = _error(500, "internal_error", "internal error in the gateway")
        start_response(
            f"{status} {_phrase(status)}", [*headers, ("Content-Length", str(len(body)))]
        )
        return [body]

    def _answer(self, environ: dict[str, Any]) -> Answer:
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

    def _invoke(self, environ: dict[str, Any]) -> Answer:
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
        except ReadTimeoutError:
            return _error(504, "unavailable",
                          f"no answer within {self.invocation_timeout:.0f} s; retry later")  # fmt: skip
        except (urllib3.exceptions.HTTPError, OSError):
            return _error(503, "unavailable", "the model server is not reachable; retry later")
        return status, _response_headers(headers), data


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # a status the model server made up
        return "Unknown"


def _error(status: int, code: str, message: str) -> Answer:
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
