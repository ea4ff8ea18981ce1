"""``twinnet container serve``: the SageMaker serving image's entrypoint.

SageMaker unpacks ``model.tar.gz`` into ``/opt/ml/model``, starts the image, sends
``GET /ping`` until it answers 200 and ``POST /invocations`` after that, on port
``SAGEMAKER_BIND_TO_PORT`` (8080 unless set). Stopping the endpoint sends SIGTERM.

This module finds the ``.mar``, applies settings from environment variables and runs
TorchServe with the serve stage's launcher (:func:`twinnet.serve.server.start` and
:func:`~twinnet.serve.server.stop`) until SIGTERM, so the container runs the same TorchServe
set-up as ``twinnet serve``, with token authorization off (SageMaker's health checks carry
no token; IAM gates who may invoke). TorchServe listens on loopback only. SageMaker's port
belongs to a :class:`~twinnet.deploy.gateway.Gateway`: it answers ``/ping`` itself, from
TorchServe's management API, because TorchServe's own ``/ping`` reports healthy before the
model has loaded; ``/invocations`` it forwards to TorchServe.

With ``--engine ray`` (or ``TWINNET_ENGINE=ray``) the same gateway sits in front of Ray
Serve's HTTP proxy instead, and the same ``model.tar.gz`` is served: see
:mod:`.container_ray`.

Settings (environment variables; all optional):

=============================== ==============================================================
``SAGEMAKER_BIND_TO_PORT``      public port (default 8080)
``TWINNET_HOST``                public bind address (default 0.0.0.0)
``TWINNET_ENGINE``              ``torchserve`` (default) or ``ray``; ``--engine`` wins
``TWINNET_BATCH_SIZE``          TorchServe batch size
``TWINNET_MAX_BATCH_DELAY``     milliseconds TorchServe waits to fill a batch
``TWINNET_WORKERS``             worker processes, or Ray replicas (also
                                ``SAGEMAKER_MODEL_SERVER_WORKERS``)
``TWINNET_THREADS``             torch threads per worker, or ``auto``
``TWINNET_RESPONSE_TIMEOUT``    seconds before TorchServe counts a batch as stuck (also
                                ``SAGEMAKER_MODEL_SERVER_TIMEOUT``; TorchServe only)
``TWINNET_PRECISION``           ``auto``, ``bf16`` or ``fp32``
``TWINNET_RESPONSE_FORMAT``     ``object`` or ``list``: the answer to a request that names
                                no ``format``
``TWINNET_STARTUP_TIMEOUT``     seconds to wait for the model to load (default 600)
``TWINNET_INVOCATION_TIMEOUT``  seconds before an invocation is answered 504 (default 55)
``TWINNET_GATEWAY_THREADS``     requests the gateway answers at once (default 32)
``TWINNET_MAX_CONNECTIONS``     client connections the gateway keeps open (default 500)
=============================== ==============================================================

The archive's ``model-config.yaml`` holds the :class:`~twinnet.serve.options.ServeOptions`
that ``twinnet package`` chose; a setting from the environment replaces its field and the
file is written again into a copy of the archive before TorchServe starts, so TorchServe
and the handler read the new values.
"""

from __future__ import annotations

import dataclasses
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
from typing import TYPE_CHECKING, Any

from ..errors import TwinnetError
from ..serve.options import CONFIG_FILE, MINIMUM, RESPONSE_FORMATS, ServeOptions, precisions
from .gateway import (
    DEFAULT_GATEWAY_THREADS,
    DEFAULT_INVOCATION_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    Gateway,
    say,
)
from .package import find_mar

if TYPE_CHECKING:
    from ..serve.state import ServerInfo

__all__ = [
    "ENGINES",
    "ContainerSettings",
    "settings_from_env",
    "apply_settings",
    "Gateway",
    "serve",
]

DEFAULT_PORT = 8080
#: The serving engines the container runs, the default first.
ENGINES = ("torchserve", "ray")
_ENGINE_NAMES = {"torchserve": "TorchServe", "ray": "Ray Serve"}
DEFAULT_STARTUP_TIMEOUT = 600.0

#: ServeOptions field -> environment variables, first one set wins.
_OPTION_ENV: dict[str, tuple[str, ...]] = {
    "batch_size": ("TWINNET_BATCH_SIZE",),
    "max_batch_delay": ("TWINNET_MAX_BATCH_DELAY",),
    "workers": ("TWINNET_WORKERS", "SAGEMAKER_MODEL_SERVER_WORKERS"),
    "threads": ("TWINNET_THREADS",),
    "response_timeout": ("TWINNET_RESPONSE_TIMEOUT", "SAGEMAKER_MODEL_SERVER_TIMEOUT"),
    "precision": ("TWINNET_PRECISION",),
    "response_format": ("TWINNET_RESPONSE_FORMAT",),
}


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
        engine: ``torchserve`` or ``ray``.
        overrides: :class:`~twinnet.serve.options.ServeOptions` fields to rewrite into
            ``model-config.yaml``.
    """

    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    invocation_timeout: float = DEFAULT_INVOCATION_TIMEOUT
    gateway_threads: int = DEFAULT_GATEWAY_THREADS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    engine: str = ENGINES[0]
    overrides: dict[str, Any] = field(default_factory=dict)


def _int(environ: Mapping[str, str], var: str, minimum: int) -> int:
    text = environ[var].strip()
    if not re.fullmatch(r"\d+", text) or int(text) < minimum:
        raise TwinnetError(f"{var}={environ[var]!r}: expected a whole number >= {minimum}")
    return int(text)


def _option(env: Mapping[str, str], option: str, var: str) -> Any:
    """One ServeOptions field from environment variable ``var``."""
    if option in ("precision", "response_format"):
        value = env[var].strip().lower()
        choices = precisions() if option == "precision" else RESPONSE_FORMATS
        if value not in choices:
            shown = f"{', '.join(choices[:-1])} or {choices[-1]}"
            raise TwinnetError(f"{var}={env[var]!r}: expected {shown}")
        return value
    if option == "threads":
        value = env[var].strip().lower()
        return value if value == "auto" else _int(env, var, 1)
    return _int(env, var, MINIMUM[option])


def _engine(value: str, where: str) -> str:
    engine = value.strip().lower()
    if engine not in ENGINES:
        raise TwinnetError(f"{where}={value!r}: expected {' or '.join(ENGINES)}")
    return engine


def settings_from_env(environ: Mapping[str, str] | None = None) -> ContainerSettings:
    """Read and check every setting up front, so a typo stops the container with one line."""
    env = os.environ if environ is None else environ
    settings = ContainerSettings()
    if env.get("SAGEMAKER_BIND_TO_PORT", "").strip():
        settings.port = _int(env, "SAGEMAKER_BIND_TO_PORT", 1)
        if settings.port > 65535:
            raise TwinnetError(f"SAGEMAKER_BIND_TO_PORT={settings.port}: not a port number")
    settings.host = env.get("TWINNET_HOST", "").strip() or settings.host
    if env.get("TWINNET_ENGINE", "").strip():
        settings.engine = _engine(env["TWINNET_ENGINE"], "TWINNET_ENGINE")
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
        if var is not None:
            settings.overrides[option] = _option(env, option, var)
    try:  # what no single variable shows, e.g. a batch size over the most TorchServe takes
        ServeOptions(**settings.overrides)
    except TwinnetError as exc:
        raise TwinnetError(f"container settings from the environment: {exc}") from None
    return settings


def read_options(mar: str | os.PathLike) -> ServeOptions:
    """The :class:`~twinnet.serve.options.ServeOptions` an archive was built with."""
    with zipfile.ZipFile(mar) as zin:
        try:
            return ServeOptions.from_yaml(zin.read(CONFIG_FILE))
        except KeyError:
            raise TwinnetError(
                f"{Path(mar).name} has no {CONFIG_FILE}; rebuild it with `twinnet package`"
            ) from None


def apply_settings(mar: Path, overrides: Mapping[str, Any], store: Path) -> Path:
    """A copy of ``mar`` in ``store`` whose ``model-config.yaml`` carries ``overrides``.

    The archive's own options (:func:`read_options`) with the overrides replaced are checked
    by :class:`~twinnet.serve.options.ServeOptions` and written by it, so every field the
    environment does not set keeps the archive's value. Entries are copied stored
    (uncompressed): TorchServe unpacks the archive once, and not recompressing the weights
    keeps start-up quick.
    """
    options = dataclasses.replace(read_options(mar), **overrides)
    text = options.to_yaml("# Rewritten by `twinnet container serve` from environment settings.")
    store.mkdir(parents=True, exist_ok=True)
    out = store / mar.name
    with zipfile.ZipFile(mar) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.is_dir():
                continue
            if info.filename == CONFIG_FILE:
                zout.writestr(CONFIG_FILE, text)
                continue
            with zin.open(info) as src, zout.open(info.filename, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return out


class _Stop(Exception):
    """SIGTERM (or SIGINT) arrived: stop the model server and leave."""


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


class _Follower(threading.Thread):
    """Copies the model server's output file to our stdout as it grows (SageMaker ships stdout to CloudWatch)."""

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


@dataclass
class _Run:
    """What one container run holds, so that the clean-up can release all of it."""

    home: Path
    gateway: Gateway | None = None
    follower: _Follower | None = None
    inference: int = 0

    @property
    def root(self) -> Path:
        return self.home / "serve"

    def close(self) -> None:
        from ..serve import server

        if self.inference:
            server.stop(port=self.inference, root=self.root, timeout=20.0)
        if self.gateway is not None:
            self.gateway.close()
        if self.follower is not None:
            self.follower.stop()
        shutil.rmtree(self.home, ignore_errors=True)


def _serve_until_stopped(settings: ContainerSettings, source: Path, run: _Run) -> int:
    """Open the port, start the engine, turn ``/ping`` healthy; returns once the engine exits."""
    if settings.engine == "ray":
        from .container_ray import RayGateway as gateway_class
    else:
        gateway_class = Gateway
    run.gateway = gateway_class(
        settings.host, settings.port, settings.invocation_timeout,
        threads=settings.gateway_threads, max_connections=settings.max_connections,
    )  # fmt: skip
    run.gateway.start()
    where = _bind_description(settings.host)
    say(
        f"listening on {settings.host}:{run.gateway.port} ({where}); "
        "/ping answers 503 until the model is ready"
    )
    if settings.overrides:
        shown = ", ".join(f"{k}={v}" for k, v in settings.overrides.items())
        say(f"settings from the environment: {shown}")
    start = _start_ray if settings.engine == "ray" else _start_torchserve
    info = start(settings, source, run)
    # Said first, so the log line is out before /ping can answer 200.
    say(f"model {', '.join(info.models)} ready: /ping and /invocations on port {run.gateway.port}")
    run.gateway.upstream = info
    while info.alive():
        time.sleep(0.2)
    say(f"{_ENGINE_NAMES[settings.engine]} exited on its own; stopping")
    return 1


def _start_torchserve(settings: ContainerSettings, mar: Path, run: _Run) -> ServerInfo:
    """TorchServe on loopback ports, with the environment's settings written into the archive."""
    from ..serve import server

    if settings.overrides:
        mar = apply_settings(mar, settings.overrides, run.home / "store")
    inference, management, metrics = server.free_loopback_ports(3, avoid={settings.port})
    run.follower = _Follower(server.instance_dir(inference, run.root) / "torchserve.out")
    run.follower.start()
    run.inference = inference
    return server.start(
        mar, host="127.0.0.1", port=inference, management_port=management,
        metrics_port=metrics, auth=False, root=run.root, timeout=settings.startup_timeout,
    )  # fmt: skip


def _start_ray(settings: ContainerSettings, source: Path, run: _Run) -> ServerInfo:
    """Ray Serve's HTTP proxy on a loopback port (:mod:`.container_ray`)."""
    from ..serve import server
    from . import container_ray

    (inference,) = server.free_loopback_ports(1, avoid={settings.port})
    run.follower = _Follower(container_ray.log_file(inference, run.root))
    run.follower.start()
    run.inference = inference
    return container_ray.start(source, settings, run.root, inference, run.home)


def serve(
    model_dir: str | os.PathLike = "/opt/ml/model",
    environ: Mapping[str, str] | None = None,
    engine: str | None = None,
) -> int:
    """Serve the ``.mar`` in ``model_dir`` on SageMaker's port until SIGTERM; returns the exit status.

    ``engine`` (``torchserve`` or ``ray``) replaces ``TWINNET_ENGINE``. Ray Serve also serves
    ``model_dir`` itself when it is a model directory (see :mod:`.container_ray`).

    TorchServe listens on loopback only; the public port belongs to a
    :class:`~twinnet.deploy.gateway.Gateway` that is up at once (``/ping`` answers 503 while
    the model loads) and turns healthy once the serve stage's
    :func:`~twinnet.serve.server.start` reports the model ready.

    SIGTERM is honoured at any moment, model loading included (SageMaker kills the container
    30 s after it): the signal handler interrupts whatever runs, and
    :func:`~twinnet.serve.server.stop` ends TorchServe's whole process group. It uses
    ``start``/``stop`` rather than ``run_foreground`` because the gateway, not TorchServe,
    owns the public port. TorchServe's output is copied to stdout.

    Returns:
        0 after a requested stop, 1 if the model server exited on its own.
    """
    settings = settings_from_env(environ)
    if engine is not None:
        settings.engine = _engine(engine, "--engine")
    if settings.engine == "ray":
        from ..serve.ray_server import check_ray
        from .container_ray import find_source

        check_ray()
        source = find_source(model_dir)
    else:
        source = find_mar(model_dir)
    previous = {s: signal.signal(s, _on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    run = _Run(home=Path(tempfile.mkdtemp(prefix="twinnet-container-")))
    try:
        return _serve_until_stopped(settings, source, run)
    except _Stop as stop:
        say(f"{stop}: stopping {_ENGINE_NAMES[settings.engine]}")
        return 0
    finally:
        for sig in previous:  # nothing may interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        try:
            run.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
