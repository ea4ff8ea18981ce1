"""Start, watch and stop twinnet's servers: the serve stage's public API, for every engine.

The work lives in the engines (:mod:`twinnet.engines.registry`) and in three shared modules,
re-exported here:

* :mod:`.state` — instance directories under the state root (``$TWINNET_HOME/serve/<port>``),
  ``server.json`` records and whether a recorded pid is still that server;
* :mod:`.health` — TorchServe's management API and the one definition of a ready model;
* :mod:`.supervise` — running a server in the foreground until SIGTERM/SIGINT.

Public entry points:

* :func:`start` / :func:`run_foreground` — TorchServe in the background, or in the foreground
  (:mod:`twinnet.engines.torchserve.server`); any engine starts with
  ``get_engine(name).start(...)``;
* :func:`status` / :func:`stop` — report and stop the servers of a state root, whichever
  engine runs them;
* :func:`find_token` — the inference token of a local server, for clients.
"""

from __future__ import annotations

import os
from typing import Any

from twinnet.engines.health import describe_model, wait_ready
from twinnet.engines.ports import free_loopback_ports, port_free
from twinnet.engines.registry import engine_of
from twinnet.engines.state import (
    CHILDREN,
    LOOPBACK,
    ServerInfo,
    find_token,
    forget,
    instance_dir,
    list_servers,
    read_keys,
    stale_reason,
    state_root,
)
from twinnet.engines.torchserve.launch import (
    DEFAULT_PORTS,
    FRONTEND_MAX_REQUEST_BYTES,
    JAVA_HINT,
    check_java,
    prepare_store,
    write_config,
)
from twinnet.engines.torchserve.server import run_foreground, start

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
        else:
            entry["models"] = engine_of(info).models(info)
        out.append(entry)
    return out


def _forget(info: ServerInfo, reason: str) -> None:
    """Remove a stale record, after the engine cleaned up what its dead server left."""
    engine_of(info).reap(info)
    forget(info, reason)


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
        engine_of(info).stop(info, timeout)
        stopped.append(info)
    return stopped
