"""Where servers keep their state, and whether a recorded server is still that server.

Each server is an *instance directory* under the state root (``$TWINNET_HOME/serve`` or
``~/.cache/twinnet/serve``), one per inference port::

    <state root>/<port>/
        config.properties   addresses, size limits, token auth, default workers
        server.json         pid and start time, ports, model names (what --status and --stop
                            read; the pid is signalled only while it is still this server)
        key_file.json       TorchServe's token file (it writes it in its working directory)
        logs/               TorchServe and worker logs
        tmp/                TorchServe's pid file, worker sockets and unpacked archives
        store/              the archive built when serving a model directory

A pid recorded before a crash or a reboot may belong to any program by now: a record counts
as its server only while a process of its group has the instance's config file on its
command line and started when recorded (:meth:`ServerInfo.alive`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

__all__ = [
    "LOOPBACK",
    "ServerInfo",
    "find_token",
    "instance_dir",
    "list_servers",
    "read_keys",
    "state_root",
]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
SERVER_FILE = "server.json"
KEY_FILE = "key_file.json"
CONFIG_FILE = "config.properties"
#: Servers started by this process, by pid, so that they can be reaped.
CHILDREN: dict[int, subprocess.Popen] = {}
#: Seconds a process's start time may differ from the recorded one: psutil derives it from
#: the boot time, which moves a little with the wall clock.
_START_SLACK_S = 2.0

logger = logging.getLogger(__name__)


@dataclass
class ServerInfo:
    """What ``server.json`` records about one running server."""

    pid: int
    host: str
    port: int
    management_port: int
    metrics_port: int
    auth: bool
    models: list[str]
    store: str
    instance: str
    started: float = field(default_factory=time.time)
    #: The launcher's start time (psutil's ``create_time``): with the command line, what tells
    #: this server from another process that got the same pid after a crash or reboot.
    create_time: float | None = None
    #: The engine's registry name (:mod:`twinnet.engines.registry`): how it is watched and stopped.
    engine: str = "torchserve"
    #: The file in the instance directory that the server's command line names.
    config: str = CONFIG_FILE

    @property
    def inference_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def key_file(self) -> Path:
        return Path(self.instance) / KEY_FILE

    @property
    def log_dir(self) -> Path:
        return Path(self.instance) / "logs"

    @property
    def config_file(self) -> Path:
        """The file named on the server process's command line (TorchServe's config, or the
        Ray server's launch record)."""
        return Path(self.instance) / self.config

    def alive(self) -> bool:
        """True while the server runs: its process group has a live member and is still this
        server's, not another program's that got the pid after a crash or reboot."""
        return group_alive(self.pid) and _is_this_server(self)

    def save(self) -> None:
        """Write ``server.json`` into the instance directory."""
        (Path(self.instance) / SERVER_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


def url_host(host: str) -> str:
    """``host`` as it goes into a URL (an any-address becomes loopback)."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def state_root(root: str | os.PathLike | None = None) -> Path:
    """Where servers keep their instance directories."""
    if root is not None:
        return Path(root)
    home = os.environ.get("TWINNET_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "twinnet"
    return base / "serve"


def instance_dir(port: int, root: str | os.PathLike | None = None) -> Path:
    """The instance directory of the server on inference port ``port``."""
    return state_root(root) / str(int(port))


def load_info(path: Path) -> ServerInfo | None:
    """The record in instance directory ``path``, or None when there is none (or it is broken)."""
    try:
        data = json.loads((path / SERVER_FILE).read_text())
        return ServerInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def list_servers(root: str | os.PathLike | None = None) -> Iterator[ServerInfo]:
    """The servers recorded under the state root (running or not)."""
    base = state_root(root)
    if not base.is_dir():
        return
    for child in sorted(base.iterdir()):
        info = load_info(child) if child.is_dir() else None
        if info is not None:
            yield info


def read_keys(key_file: str | os.PathLike) -> dict[str, str]:
    """``{"inference": ..., "management": ..., "API": ...}`` from TorchServe's key file."""
    try:
        data = json.loads(Path(key_file).read_text())
    except (OSError, ValueError):
        return {}
    keys = {}
    for kind in ("inference", "management", "API"):
        entry = data.get(kind)
        if isinstance(entry, dict) and isinstance(entry.get("key"), str):
            keys[kind] = entry["key"]
    return keys


def find_token(
    url: str, root: str | os.PathLike | None = None, kind: str = "inference"
) -> str | None:
    """The token of a server this machine started, when ``url`` points at its port on loopback."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if (parts.hostname or "") not in LOOPBACK | {"0.0.0.0"}:
        return None
    port = parts.port or 80
    for info in list_servers(root):
        if port in (info.port, info.management_port) and info.auth:
            return read_keys(info.key_file).get(kind)
    return None


# ---------------------------------------------------------------------------- processes
def group_alive(pgid: int) -> bool:
    """True while process group ``pgid`` has a member that is not a zombie."""
    child = CHILDREN.get(pgid)
    if child is not None:
        child.poll()  # reap the leader if it exited, so it does not linger as a zombie
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's group
        return True
    # Zombies still count for killpg; look for a live member.
    for proc in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return not Path("/proc").is_dir()


def _group_processes(pgid: int) -> list[psutil.Process]:
    """The processes of process group ``pgid`` other than its leader."""
    procs = []
    for pid in psutil.pids():
        with contextlib.suppress(OSError, psutil.Error):
            if pid != pgid and os.getpgid(pid) == pgid:
                procs.append(psutil.Process(pid))
    return procs


def _is_server_process(proc: psutil.Process, info: ServerInfo) -> bool:
    """True when ``proc`` is the recorded server's launcher or its JVM, and not a zombie.

    Both name the instance's config file on their command line; the launcher started when
    the record says, the JVM after that.
    """
    expected = info.create_time if info.create_time is not None else info.started
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
        if proc.pid == info.pid:
            on_time = abs(started - expected) <= _START_SLACK_S
        else:
            on_time = started >= expected - _START_SLACK_S
        if not on_time:
            return False
        cmdline = proc.cmdline()
        for _ in range(10):  # empty while the process is being set up (exec): read it again
            if cmdline:
                break
            time.sleep(0.05)
            cmdline = proc.cmdline()
        return str(info.config_file) in cmdline
    except psutil.Error:
        return False


def _program(pid: int) -> str | None:
    """The command line of process ``pid`` (shortened), or None when there is none."""
    try:
        proc = psutil.Process(pid)
        text = " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return None
    return text if len(text) <= 80 else text[:77] + "..."


def _is_this_server(info: ServerInfo) -> bool:
    """True while process group ``info.pid`` is the recorded server.

    After a crash or a reboot the recorded pid may belong to any program: only a process
    with this instance's config file on its command line, started when recorded, counts.
    """
    with contextlib.suppress(psutil.Error):  # the launcher itself: the usual case, no scan
        if _is_server_process(psutil.Process(info.pid), info):
            return True
    return any(_is_server_process(proc, info) for proc in _group_processes(info.pid))


def stale_reason(info: ServerInfo) -> str | None:
    """None when the recorded server runs; else why its record is stale."""
    if group_alive(info.pid) and _is_this_server(info):
        return None
    program = _program(info.pid)
    if program is None:
        return f"pid {info.pid} is not running"
    return f"pid {info.pid} now belongs to another program ({program})"


def forget(info: ServerInfo, reason: str) -> None:
    """Remove a stale record (logs stay), saying why; its pid is never signalled."""
    logger.warning(
        "no twinnet server runs on port %d any more (%s); removed its stale record in %s",
        info.port,
        reason,
        info.instance,
    )
    remove_instance(Path(info.instance), keep_logs=True)


def java_pid(info: ServerInfo) -> int | None:
    """The pid of TorchServe's JVM, from the pid file it writes in the instance's tmp/."""
    pid_file = Path(info.instance) / "tmp" / ".model_server.pid"
    with contextlib.suppress(OSError, ValueError):
        return int(pid_file.read_text().strip())
    return None


def remove_instance(instance: Path, keep_logs: bool = False) -> None:
    """Delete a stopped server's state; with ``keep_logs`` only what a restart must not see."""
    tmp = instance / "tmp"
    if tmp.is_symlink():
        shutil.rmtree(tmp.resolve(), ignore_errors=True)
        tmp.unlink(missing_ok=True)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_logs:
        shutil.rmtree(instance, ignore_errors=True)
        return
    for name in (KEY_FILE, SERVER_FILE):
        (instance / name).unlink(missing_ok=True)
