"""Start, watch and stop TorchServe for twinnet models: the serve stage's public API.

The work lives in three modules, re-exported here:

* :mod:`.state` — instance directories under the state root (``$TWINNET_HOME/serve/<port>``),
  ``server.json`` records and whether a recorded pid is still that server;
* :mod:`.launch` — the checks, the model store, ``config.properties`` and the process;
* :mod:`.health` — the management API and the one definition of a ready model.

Public entry points:

* :func:`start` — background server; returns once every model has a READY worker
  (:func:`~twinnet.engines.health.model_ready`). ``twinnet serve`` uses it, and so does the
  SageMaker container (:mod:`twinnet.container.main`), which binds TorchServe to loopback
  and puts a gateway of its own on SageMaker's port: TorchServe's ``/ping`` says "Healthy"
  before the model has loaded, so the gateway answers ``/ping`` from the management API;
* :func:`run_foreground` — the same server in the foreground until SIGTERM/SIGINT
  (``twinnet serve --foreground``); TorchServe's own routes, ``/ping`` included, are the
  public ones there;
* :func:`status` / :func:`stop` — report and stop the servers of a state root, Ray Serve
  servers (``engine: ray``, :mod:`.ray_server`) among them;
* :func:`find_token` — the inference token of a local server, for clients.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from twinnet.engines.health import describe_model, wait_ready
from twinnet.engines.state import (
    CHILDREN,
    LOOPBACK,
    ServerInfo,
    find_token,
    forget,
    group_alive,
    instance_dir,
    java_pid,
    list_servers,
    read_keys,
    remove_instance,
    stale_reason,
    state_root,
)
from twinnet.engines.supervise import run_until_stopped
from twinnet.engines.torchserve.launch import (
    DEFAULT_PORTS,
    FRONTEND_MAX_REQUEST_BYTES,
    JAVA_HINT,
    check_java,
    free_loopback_ports,
    launch,
    port_free,
    prepare_store,
    write_config,
)

__all__ = [
    "DEFAULT_PORTS",
    "FRONTEND_MAX_REQUEST_BYTES",
    "JAVA_HINT",
    "ServerInfo",
    "state_root",
    "instance_dir",
    "prepare_store",
    "write_config",
    "start",
    "run_foreground",
    "status",
    "stop",
    "free_loopback_ports",
    "find_token",
    "list_servers",
    "read_keys",
    "wait_ready",
    "describe_model",
    "check_java",
    "port_free",
    "LOOPBACK",
]


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
    try:
        wait_ready(info, timeout)
    except BaseException:
        _stop_info(info)
        raise
    return info


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
        info, proc, wait_ready, lambda i: _stop_info(i, timeout=30.0), timeout, on_ready
    )


def status(root: str | os.PathLike | None = None, port: int | None = None) -> list[dict[str, Any]]:
    """One dict per server of ``root`` (optionally only ``port``): alive, URLs, worker states.

    A record whose server no longer runs (its pid exited, or now belongs to another program
    after a crash or reboot) is reported not alive and removed, with a logged warning.
    """
    out = []
    for info in list(list_servers(root)):
        if port is not None and info.port != port:
            continue
        reason = stale_reason(info)
        entry: dict[str, Any] = {"info": info, "alive": reason is None, "models": {}}
        if reason is not None:
            _forget(info, reason)
        elif info.engine == "ray":
            from twinnet.engines.ray.server import replica_states

            entry["models"] = replica_states(info)
        else:
            for model in info.models:
                try:
                    desc = describe_model(info, model, timeout=2.0)
                except OSError:
                    desc = []
                entry["models"][model] = [
                    w.get("status", "?") for v in desc for w in v.get("workers", [])
                ]
        out.append(entry)
    return out


def _forget(info: ServerInfo, reason: str) -> None:
    """Remove a stale record; a Ray server's processes left behind by its dead server process
    (found by its Ray directory, never by the recorded pid) are killed first."""
    if info.engine == "ray":
        from twinnet.engines.ray.server import reap

        reap(info)
    forget(info, reason)


def _stop_info(info: ServerInfo, timeout: float = 30.0) -> None:
    """SIGTERM TorchServe's JVM (its clean stop), then the group; SIGKILL what remains.

    Only for a server this process started or one whose identity was just checked: from
    here on the whole process group is signalled until no member is left. A Ray Serve
    server is stopped by :func:`.ray_server.stop_info`.
    """
    if info.engine == "ray":
        from twinnet.engines.ray.server import stop_info

        stop_info(info, timeout)
        return
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


def stop(
    port: int | None = None, root: str | os.PathLike | None = None, timeout: float = 30.0
) -> list[ServerInfo]:
    """Stop the servers of ``root`` (only the one on ``port`` when given); returns those stopped.

    Nothing is left behind: the JVM gets SIGTERM (TorchServe's own ``--stop``), then the
    process group (JVM, launcher, Python workers) is terminated and, if needed, killed.
    A record whose pid is no longer that server (see :func:`status`) is removed without
    signalling anything; a server this process started is known to be its own.
    """
    stopped = []
    for info in list(list_servers(root)):
        if port is not None and info.port != port:
            continue
        reason = None if info.pid in CHILDREN else stale_reason(info)
        if reason is not None:
            _forget(info, reason)
            continue
        _stop_info(info, timeout)
        stopped.append(info)
    return stopped
