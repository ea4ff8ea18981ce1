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
=============================== ==============================================================

The archive's ``model-config.yaml`` holds the values ``twinnet package`` chose; a setting
from the environment rewrites that file into a copy of the archive before TorchServe
starts, so TorchServe itself reads the new values.
"""

from __future__ import annotations

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

from ..errors import TwinnetError
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
        overrides: archive options to rewrite into ``model-config.yaml``.
    """

    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    invocation_timeout: float = DEFAULT_INVOCATION_TIMEOUT
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


#: Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
     "upgrade", "host", "content-length"}
)  # fmt: skip


class Gateway:
    """SageMaker's port: answers ``/ping`` itself and forwards ``/invocations`` to TorchServe.

    TorchServe's own ``/ping`` says "Healthy" as soon as its frontend is up, seconds before
    the worker has loaded the model (pytorch/serve#1679, #2434), so SageMaker would route
    traffic to a container that cannot answer yet. The gateway answers ``/ping`` with 200
    only when TorchServe's management API shows a READY worker, and 503 before that (or
    when no worker is READY any more). It also bounds each invocation by
    ``invocation_timeout`` so callers get an answer inside SageMaker's 60 s limit.

    Args:
        host: public bind address.
        port: public port (``SAGEMAKER_BIND_TO_PORT``).
        invocation_timeout: seconds an invocation may take before the gateway answers 504.
        max_request_bytes: larger bodies get 413 without being read.
    """

    def __init__(
        self,
        host: str,
        port: int,
        invocation_timeout: float = 55.0,
        max_request_bytes: int | None = None,
    ) -> None:
        from http.server import ThreadingHTTPServer

        from ..serve.server import FRONTEND_MAX_REQUEST_BYTES

        self.upstream: Any = None  # the ServerInfo, once the model is READY
        self.invocation_timeout = float(invocation_timeout)
        self.max_request_bytes = int(max_request_bytes or FRONTEND_MAX_REQUEST_BYTES)
        self._ready_at = 0.0
        self._ready = False
        self._lock = threading.Lock()
        self._local = threading.local()
        handler = _gateway_handler(self)
        try:
            self.server = ThreadingHTTPServer((host, int(port)), handler)
        except OSError as exc:
            raise TwinnetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="twinnet-gateway", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop accepting; in-flight requests finish on their own (daemon) threads."""
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

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


def _gateway_handler(gateway: Gateway) -> type:
    """The request handler class bound to ``gateway``."""
    import json
    from http.server import BaseHTTPRequestHandler

    from ..protocol import error_body

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "twinnet"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
            return  # TorchServe's access log already records every invocation

        def _send(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None,
                  close: bool = False) -> None:  # fmt: skip
            self.send_response(status)
            sent_type = False
            for key, value in headers or []:
                if key.lower() in _HOP_BY_HOP:
                    continue
                sent_type |= key.lower() == "content-type"
                self.send_header(key, value)
            if not sent_type:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, close: bool = False) -> None:
            self._send(status, json.dumps(error_body(code, message)).encode(), close=close)

        def do_GET(self) -> None:
            route = self.path.split("?", 1)[0]
            if route == "/ping":
                if gateway.healthy():
                    self._send(200, b'{"status": "Healthy"}')
                else:
                    self._error(503, "unavailable", "the model is loading or has no ready worker")
            elif route == "/invocations":
                self._error(405, "bad_request", "use POST /invocations")
            else:
                self._error(
                    404, "not_found", f"no route {route}; use GET /ping or POST /invocations"
                )

        do_HEAD = do_GET

        def do_POST(self) -> None:
            route = self.path.split("?", 1)[0]
            length_text = self.headers.get("Content-Length")
            if (
                self.headers.get("Transfer-Encoding", "").lower() == "chunked"
                or length_text is None
            ):
                self._error(411, "bad_request", "send the body with a Content-Length", close=True)
                return
            try:
                length = int(length_text)
            except ValueError:
                self._error(400, "bad_request", "invalid Content-Length", close=True)
                return
            if length > gateway.max_request_bytes:
                self._error(413, "payload_too_large",
                            f"request of {length / 2**20:.1f} MiB is over the limit", close=True)  # fmt: skip
                return
            body = self.rfile.read(length) if length else b""
            if route != "/invocations":
                self._error(404, "not_found", f"no route {route}; use POST /invocations")
                return
            if gateway.upstream is None:
                self._error(
                    503, "unavailable", "the model is still loading; retry after /ping answers 200"
                )
                return
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
            try:
                status, resp_headers, data = gateway.forward("POST", self.path, headers, body)
            except TimeoutError:
                self._error(504, "unavailable",
                            f"no answer within {gateway.invocation_timeout:.0f} s; retry later")  # fmt: skip
                return
            except OSError:
                self._error(503, "unavailable", "the model server is not reachable; retry later")
                return
            self._send(status, data, resp_headers)

    return Handler


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
        gateway = Gateway(settings.host, settings.port, settings.invocation_timeout)
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
