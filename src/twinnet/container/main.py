"""``twinnet container serve``: the SageMaker serving image's entrypoint.

SageMaker unpacks ``model.tar.gz`` into ``/opt/ml/model``, starts the image, sends
``GET /ping`` until it answers 200 and ``POST /invocations`` after that, on port
``SAGEMAKER_BIND_TO_PORT`` (8080 unless set). Stopping the endpoint sends SIGTERM.

This module finds the ``.mar``, applies settings from environment variables and runs
TorchServe with the serve stage's launcher (:func:`twinnet.engines.server.start` and
:func:`~twinnet.engines.server.stop`) until SIGTERM, so the container runs the same TorchServe
set-up as ``twinnet serve``, with token authorization off (SageMaker's health checks carry
no token; IAM gates who may invoke). TorchServe listens on loopback only. SageMaker's port
belongs to a :class:`~twinnet.container.gateway.Gateway`: it answers ``/ping`` itself, from
TorchServe's management API, because TorchServe's own ``/ping`` reports healthy before the
model has loaded; ``/invocations`` it forwards to TorchServe.

With ``--engine ray`` (or ``TWINNET_ENGINE=ray``) the same gateway sits in front of Ray
Serve's HTTP proxy instead, and the same ``model.tar.gz`` is served: see
:mod:`twinnet.container.ray`.

Settings come from environment variables: see :mod:`twinnet.container.settings`.

The archive's ``model-config.yaml`` holds the :class:`~twinnet.contract.options.ServeOptions`
that ``twinnet package`` chose; a setting from the environment replaces its field and the
file is written again into a copy of the archive before TorchServe starts, so TorchServe
and the handler read the new values.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twinnet.container import ray as container_ray
from twinnet.container.gateway import (
    Gateway,
    say,
)
from twinnet.container.package import find_mar
from twinnet.container.settings import (
    ENGINES,
    ContainerSettings,
    parse_engine,
    read_options,
    settings_from_env,
)
from twinnet.contract.options import CONFIG_FILE
from twinnet.engines import server
from twinnet.engines.registry import get_engine

if TYPE_CHECKING:
    from twinnet.engines.state import ServerInfo

__all__ = [
    "ENGINES",
    "ContainerSettings",
    "settings_from_env",
    "apply_settings",
    "Gateway",
    "serve",
]


def apply_settings(mar: Path, overrides: Mapping[str, Any], store: Path) -> Path:
    """A copy of ``mar`` in ``store`` whose ``model-config.yaml`` carries ``overrides``.

    The archive's own options (:func:`read_options`) with the overrides replaced are checked
    by :class:`~twinnet.contract.options.ServeOptions` and written by it, so every field the
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
        if self.inference:
            server.stop(port=self.inference, root=self.root, timeout=20.0)
        if self.gateway is not None:
            self.gateway.close()
        if self.follower is not None:
            self.follower.stop()
        shutil.rmtree(self.home, ignore_errors=True)


def _writable_home(run: _Run) -> None:
    """Give the model server a writable HOME when the image's is not (serverless: only
    ``/tmp`` is writable), so libraries that keep caches or ids there do not fail."""
    home = os.environ.get("HOME", "")
    if home and os.access(home, os.W_OK):
        return
    fallback = run.home / "home"
    fallback.mkdir(parents=True, exist_ok=True)
    os.environ["HOME"] = str(fallback)
    say(f"HOME {home or '(unset)'} is not writable; the model server uses {fallback}")


def _serve_until_stopped(settings: ContainerSettings, source: Path, run: _Run) -> int:
    """Open the port, start the engine, turn ``/ping`` healthy; returns once the engine exits."""
    runner = _RUNNERS[settings.engine]()
    run.gateway = runner.gateway(
        settings.host, settings.port, settings.invocation_timeout, settings.max_request_bytes,
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
    info = runner.start(settings, source, run)
    # Said first, so the log line is out before /ping can answer 200.
    say(f"model {', '.join(info.models)} ready: /ping and /invocations on port {run.gateway.port}")
    run.gateway.upstream = info
    while info.alive():
        time.sleep(0.2)
    say(f"{get_engine(settings.engine).title} exited on its own; stopping")
    return 1


def _start_torchserve(settings: ContainerSettings, mar: Path, run: _Run) -> ServerInfo:
    """TorchServe on loopback ports, with the environment's settings written into the archive."""
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
    (inference,) = server.free_loopback_ports(1, avoid={settings.port})
    run.follower = _Follower(container_ray.log_file(inference, run.root))
    run.follower.start()
    run.inference = inference
    return container_ray.start(source, settings, run.root, inference, run.home)


@dataclass(frozen=True)
class _Runner:
    """How the container runs one engine: its gateway, where its model is, how it starts."""

    gateway: type[Gateway]
    find_source: Callable[[str | os.PathLike], Path]
    start: Callable[[ContainerSettings, Path, _Run], ServerInfo]


def _torchserve() -> _Runner:
    return _Runner(Gateway, find_mar, _start_torchserve)


def _ray() -> _Runner:
    return _Runner(container_ray.RayGateway, container_ray.find_source, _start_ray)


#: engine name -> its runner, for the engines of :mod:`twinnet.engines.registry`.
_RUNNERS: dict[str, Callable[[], _Runner]] = {"torchserve": _torchserve, "ray": _ray}


def serve(
    model_dir: str | os.PathLike = "/opt/ml/model",
    environ: Mapping[str, str] | None = None,
    engine: str | None = None,
) -> int:
    """Serve the ``.mar`` in ``model_dir`` on SageMaker's port until SIGTERM; returns the exit status.

    ``engine`` (``torchserve`` or ``ray``) replaces ``TWINNET_ENGINE``. Ray Serve also serves
    ``model_dir`` itself when it is a model directory (see :mod:`.container_ray`).

    TorchServe listens on loopback only; the public port belongs to a
    :class:`~twinnet.container.gateway.Gateway` that is up at once (``/ping`` answers 503 while
    the model loads) and turns healthy once the serve stage's
    :func:`~twinnet.engines.server.start` reports the model ready.

    SIGTERM is honoured at any moment, model loading included (SageMaker kills the container
    30 s after it): the signal handler interrupts whatever runs, and
    :func:`~twinnet.engines.server.stop` ends TorchServe's whole process group. It uses
    ``start``/``stop`` rather than ``run_foreground`` because the gateway, not TorchServe,
    owns the public port. TorchServe's output is copied to stdout.

    Returns:
        0 after a requested stop, 1 if the model server exited on its own.
    """
    settings = settings_from_env(environ)
    if engine is not None:
        settings.engine = parse_engine(engine, "--engine")
    get_engine(settings.engine).check()
    source = _RUNNERS[settings.engine]().find_source(model_dir)
    previous = {s: signal.signal(s, _on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    run = _Run(home=Path(tempfile.mkdtemp(prefix="twinnet-container-")))
    try:
        _writable_home(run)
        return _serve_until_stopped(settings, source, run)
    except _Stop as stop:
        say(f"{stop}: stopping {get_engine(settings.engine).title}")
        return 0
    finally:
        for sig in previous:  # nothing may interrupt the clean-up
            signal.signal(sig, signal.SIG_IGN)
        try:
            run.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
