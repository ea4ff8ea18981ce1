"""TorchServe in the background or the foreground, and its clean stop.

:func:`start` is what ``twinnet serve`` runs, and the SageMaker container too
(:mod:`twinnet.container.main`), which binds TorchServe to loopback and puts a gateway of its
own on SageMaker's port: TorchServe's ``/ping`` says "Healthy" before the model has loaded,
so the gateway answers ``/ping`` from the management API
(:func:`~twinnet.engines.health.model_ready`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from twinnet.engines.health import wait_ready
from twinnet.engines.state import CHILDREN, ServerInfo, group_alive, java_pid, remove_instance
from twinnet.engines.supervise import ready_or_stopped, run_until_stopped
from twinnet.engines.torchserve.launch import launch

__all__ = ["start", "run_foreground", "stop_info"]


def start(
    source: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8080,
    management_port: int = 8081,
    metrics_port: int = 8082,
    auth: bool = True,
    root: str | os.PathLike | None = None,
    name: str | None = None,
    timeout: float = 300.0,
    default_workers: int | None = None,
    **archive_options: Any,
) -> ServerInfo:
    """Start TorchServe in the background and return once every model has a READY worker.

    Args:
        source: a model directory (archived on the fly), a model store, or a ``.mar``.
        host: inference bind address; management and metrics always bind loopback.
        port, management_port, metrics_port: the three listening ports.
        auth: token authorization (TorchServe's default); the key file is
            ``<instance>/key_file.json``.
        root: the state root (default ``$TWINNET_HOME/serve`` or ``~/.cache/twinnet/serve``).
        name: model name when archiving a model directory (default: the spec's name).
        timeout: seconds to wait for a READY worker.
        default_workers: TorchServe's ``default_workers_per_model`` for archives that do not
            set their own workers.
        **archive_options: passed to :func:`twinnet.engines.torchserve.archive.build_archive`
            (``options=ServeOptions(...)`` or its fields as keywords).
    """
    ports = {"inference": port, "management": management_port, "metrics": metrics_port}
    info, _ = launch(source, host, ports, auth, root, name, False, default_workers, archive_options)
    return ready_or_stopped(info, wait_ready, stop_info, timeout)


def run_foreground(
    store: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8080,
    auth: bool = False,
    management_port: int = 8081,
    metrics_port: int = 8082,
    root: str | os.PathLike | None = None,
    name: str | None = None,
    timeout: float = 300.0,
    on_ready: Any = None,
    **archive_options: Any,
) -> int:
    """Run TorchServe in the foreground until it exits or this process gets SIGTERM/SIGINT.

    This is ``twinnet serve --foreground``. TorchServe's output goes to stdout, and its own
    routes (``/predictions/<name>``, ``/invocations``, ``/ping``) are served on ``port``.
    On SIGTERM or SIGINT the whole TorchServe process group is stopped before returning,
    also while the model is still loading. (The SageMaker container does not run this: it
    uses :func:`start` and :func:`stop` behind its own gateway, see
    :mod:`twinnet.container.main`.)

    Args:
        on_ready: optional callable given the :class:`ServerInfo` once the model is READY
            (``twinnet serve --foreground`` prints the URLs with it).
        Others: as for :func:`start`.

    Returns:
        TorchServe's exit status (0 after a requested stop).
    """
    ports = {"inference": port, "management": management_port, "metrics": metrics_port}
    info, proc = launch(store, host, ports, auth, root, name, True, None, archive_options)
    return run_until_stopped(
        info, proc, wait_ready, lambda i: stop_info(i, timeout=30.0), timeout, on_ready
    )


def stop_info(info: ServerInfo, timeout: float = 30.0) -> None:
    """SIGTERM TorchServe's JVM (its clean stop), then the group; SIGKILL what remains.

    Only for a server this process started or one whose identity was just checked: from
    here on the whole process group is signalled until no member is left.
    """
    java = java_pid(info)
    if java is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(java) == info.pid:
                os.kill(java, signal.SIGTERM)
    deadline = time.monotonic() + timeout / 2
    while group_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not group_alive(info.pid):
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(info.pid, sig)
        deadline = time.monotonic() + (timeout / 4 if sig == signal.SIGTERM else 10)
        while group_alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    child = CHILDREN.pop(info.pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    remove_instance(Path(info.instance), keep_logs=True)
