"""Start, watch and stop TorchServe for twinnet models.

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

Everything TorchServe would otherwise put in shared places (``/tmp/.model_server.pid``,
``/tmp/.ts.sock.9000``, ``./key_file.json``) lives in that directory, so several servers
(tests, benchmarks, a SageMaker container) run side by side without touching each other, and
``twinnet compare --url`` finds the inference token of a local server by its port.

Public entry points:

* :func:`start` — background server; returns once the model has a READY worker;
* :func:`run_foreground` — the same server in the foreground until SIGTERM/SIGINT; this is
  what the SageMaker container runs::

      run_foreground(store="/opt/ml/model", host="0.0.0.0",
                     port=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", 8080)), auth=False)

  ``/ping`` and ``/invocations`` are TorchServe's own routes on the inference port;
  ``/invocations`` needs no model name when the store holds one model;
* :func:`status` / :func:`stop` — report and stop the servers of a state root;
* :func:`find_token` — the inference token of a local server, for clients.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from ..errors import TwinnetError
from ..protocol import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from ..spec import SPEC_FILE, ModelSpec

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

DEFAULT_PORTS = (8080, 8081, 8082)
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
#: TorchServe's own cap. Twice the contract's 6 MB, so that bodies between 6 and 12 MB reach
#: the handler and get the contract's 413 error object; larger ones get TorchServe's bare 413.
FRONTEND_MAX_REQUEST_BYTES = 2 * MAX_REQUEST_BYTES
JAVA_HINT = (
    "TorchServe needs Java 17, and `java` was not found. Install it with "
    "`sudo apt-get install openjdk-17-jre-headless` (Debian/Ubuntu) or set JAVA_HOME"
)
_SERVER_FILE = "server.json"
_KEY_FILE = "key_file.json"
_CONFIG_FILE = "config.properties"
_CHILDREN: dict[int, subprocess.Popen] = {}  # servers started by this process, to reap
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

    @property
    def inference_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def key_file(self) -> Path:
        return Path(self.instance) / _KEY_FILE

    @property
    def log_dir(self) -> Path:
        return Path(self.instance) / "logs"

    @property
    def config_file(self) -> Path:
        return Path(self.instance) / _CONFIG_FILE

    def alive(self) -> bool:
        """True while the server runs: its process group has a live member and is still this
        server's, not another program's that got the pid after a crash or reboot."""
        return _group_alive(self.pid) and _is_this_server(self)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# ---------------------------------------------------------------------------- state
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


def _load_info(path: Path) -> ServerInfo | None:
    try:
        data = json.loads((path / _SERVER_FILE).read_text())
        return ServerInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def list_servers(root: str | os.PathLike | None = None) -> Iterator[ServerInfo]:
    """The servers recorded under the state root (running or not)."""
    base = state_root(root)
    if not base.is_dir():
        return
    for child in sorted(base.iterdir()):
        info = _load_info(child) if child.is_dir() else None
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


# ---------------------------------------------------------------------------- checks
def check_java() -> str:
    """The java executable TorchServe will use, or a TwinnetError saying how to install it."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise TwinnetError(JAVA_HINT)
    return java


def port_free(host: str, port: int) -> bool:
    """True when ``host:port`` can be bound now."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host.strip("[]"), int(port)))
        except OSError:
            return False
    return True


def free_loopback_ports(n: int, avoid: set[int]) -> tuple[int, ...]:
    """``n`` distinct free loopback ports, none in ``avoid`` (TorchServe's gRPC and inner APIs)."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
            port = sock.getsockname()[1]
            if port not in avoid:
                ports.append(port)
    finally:
        for sock in socks:
            sock.close()
    return tuple(ports)


def _check_ports(host: str, ports: dict[str, int]) -> None:
    if len(set(ports.values())) != len(ports):
        raise TwinnetError(f"ports must differ, got {ports}")
    for what, port in ports.items():
        bind = host if what == "inference" else "127.0.0.1"
        if not 0 < port < 65536:
            raise TwinnetError(f"{what} port {port} is not a valid port number")
        if not port_free(bind, port):
            raise TwinnetError(
                f"{what} port {port} on {bind} is already in use (another server? see "
                f"`twinnet serve --status`); choose another with --{'port' if what == 'inference' else what + '-port'}"
            )


# ---------------------------------------------------------------------------- store
def prepare_store(
    source: str | os.PathLike, workdir: Path, name: str | None = None, **archive_options: Any
) -> tuple[Path, list[str]]:
    """A model store and the model names in it, from a model directory, a store or a ``.mar``."""
    src = Path(source)
    if (src / SPEC_FILE).is_file():
        from .archive import build_archive

        model_name = name or ModelSpec.load(src).name
        mar = build_archive(src, workdir / "store", name=model_name, **archive_options)
        return mar.parent, [model_name]
    if src.is_file() and src.suffix == ".mar":
        return src.parent.resolve(), [src.stem]
    if src.is_dir():
        mars = sorted(p.stem for p in src.glob("*.mar"))
        if mars:
            return src.resolve(), mars
        raise TwinnetError(
            f"{src} is neither a model directory (no {SPEC_FILE}) nor a model store (no .mar); "
            "build one with `twinnet archive MODEL_DIR --out STORE`"
        )
    raise TwinnetError(f"{src} does not exist")


def write_config(
    path: Path,
    store: Path,
    models: list[str],
    host: str = "127.0.0.1",
    port: int = 8080,
    management_port: int = 8081,
    metrics_port: int = 8082,
    auth: bool = True,
    default_workers: int | None = None,
    grpc_ports: tuple[int, int] | None = None,
) -> Path:
    """Write ``config.properties``; every limit that matters is set explicitly.

    TorchServe always starts gRPC servers too (7070/7071 unless told otherwise); they get
    loopback ports of their own (``grpc_ports``) so that servers can run side by side.
    """
    bind = _url_host(host) if host not in ("0.0.0.0", "::") else host
    props = {
        "inference_address": f"http://{bind}:{port}",
        "management_address": f"http://127.0.0.1:{management_port}",
        "metrics_address": f"http://127.0.0.1:{metrics_port}",
        "model_store": str(store),
        "load_models": ",".join(f"{m}.mar" for m in models),
        "max_request_size": FRONTEND_MAX_REQUEST_BYTES,
        "max_response_size": MAX_RESPONSE_BYTES,
        "disable_token_authorization": str(not auth).lower(),
        "enable_model_api": "false",
        "install_py_dep_per_model": "false",
        "disable_system_metrics": "true",
        "metrics_mode": "prometheus",
        "job_queue_size": 256,
        "default_response_timeout": 120,
    }
    if grpc_ports is not None:
        props["grpc_inference_address"] = "127.0.0.1"
        props["grpc_management_address"] = "127.0.0.1"
        props["grpc_inference_port"], props["grpc_management_port"] = grpc_ports
    if default_workers is not None:
        props["default_workers_per_model"] = int(default_workers)
    text = "# Written by twinnet serve.\n" + "".join(f"{k}={v}\n" for k, v in props.items())
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- processes
def _group_alive(pgid: int) -> bool:
    child = _CHILDREN.get(pgid)
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
        return on_time and str(info.config_file) in proc.cmdline()
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


def _stale_reason(info: ServerInfo) -> str | None:
    """None when the recorded server runs; else why its record is stale."""
    if _group_alive(info.pid) and _is_this_server(info):
        return None
    program = _program(info.pid)
    if program is None:
        return f"pid {info.pid} is not running"
    return f"pid {info.pid} now belongs to another program ({program})"


def _forget(info: ServerInfo, reason: str) -> None:
    """Remove a stale record (logs stay), saying why; its pid is never signalled."""
    logger.warning(
        "no twinnet server runs on port %d any more (%s); removed its stale record in %s",
        info.port,
        reason,
        info.instance,
    )
    _remove_instance(Path(info.instance), keep_logs=True)


def _java_pid(info: ServerInfo) -> int | None:
    pid_file = Path(info.instance) / "tmp" / ".model_server.pid"
    with contextlib.suppress(OSError, ValueError):
        return int(pid_file.read_text().strip())
    return None


def _http(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback URL we built
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def describe_model(info: ServerInfo, name: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The management API's description of ``name``: one dict per version, with ``workers``."""
    token = read_keys(info.key_file).get("management") if info.auth else None
    code, body = _http(f"{info.management_url}/models/{name}", token, timeout)
    if code != 200:
        return []
    try:
        data = json.loads(body)
    except ValueError:
        return []
    return data if isinstance(data, list) else []


def _workers_ready(info: ServerInfo, name: str) -> bool:
    """True when ``name`` has workers and every one of them is READY."""
    try:
        desc = describe_model(info, name, timeout=2.0)
    except OSError:
        return False
    states = [w.get("status") for version in desc for w in version.get("workers", [])]
    return bool(states) and all(s == "READY" for s in states)


def _log_tail(info: ServerInfo, lines: int = 15) -> str:
    for name in ("torchserve.out", "logs/ts_log.log", "logs/model_log.log"):
        path = Path(info.instance) / name
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace").strip().splitlines()
            if text:
                return "\n".join(text[-lines:])
    return "(no log output)"


def wait_ready(
    info: ServerInfo, timeout: float = 300.0, should_stop: Callable[[], bool] | None = None
) -> float:
    """Block until every worker of every model is READY (not just ``/ping``); returns seconds.

    ``should_stop`` is polled too, so a SIGTERM during a slow model load is honoured at once
    (SageMaker kills a container that ignores it for 30 s).
    """
    start = time.monotonic()
    while True:
        if should_stop is not None and should_stop():
            raise TwinnetError("stopped before the model was ready")
        if not info.alive():
            raise TwinnetError(
                f"TorchServe exited during start-up; last log lines:\n{_log_tail(info)}"
            )
        if info.key_file.exists() or not info.auth:
            if all(_workers_ready(info, m) for m in info.models):
                return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TwinnetError(
                f"the model did not become ready within {timeout:.0f} s; see logs in "
                f"{info.log_dir}. Last lines:\n{_log_tail(info)}"
            )
        time.sleep(0.25)


def _short_tmp(instance: Path) -> Path:
    """A directory for worker sockets: unix socket paths must stay under ~100 bytes."""
    tmp = instance / "tmp"
    if len(str(tmp / ".ts.sock.65535")) > 100:
        tmp = Path(tempfile.mkdtemp(prefix="twinnet-ts-"))
        link = instance / "tmp"
        if link.is_symlink() or link.exists():
            if link.is_symlink() or link.is_file():
                link.unlink()
            else:
                shutil.rmtree(link)
        link.symlink_to(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def _launch(
    source: str | os.PathLike,
    host: str,
    port: int,
    management_port: int,
    metrics_port: int,
    auth: bool,
    root: str | os.PathLike | None,
    name: str | None,
    foreground: bool,
    default_workers: int | None,
    archive_options: dict[str, Any],
) -> tuple[ServerInfo, subprocess.Popen]:
    check_java()
    try:
        import ts  # noqa: F401
    except ImportError:
        raise TwinnetError(
            "TorchServe is not installed; install it with pip install 'twinnet[serve]'"
        ) from None
    instance = instance_dir(port, root)
    old = _load_info(instance)
    if old is not None and old.alive():
        raise TwinnetError(
            f"a twinnet server already runs on port {port} (pid {old.pid}); "
            "stop it with `twinnet serve --stop` or choose another --port"
        )
    _check_ports(host, {"inference": port, "management": management_port, "metrics": metrics_port})
    if host not in LOOPBACK and not auth:
        warnings.warn(
            f"token authorization is off and the server listens on {host}: anyone who can "
            "reach this port can use the model. Drop --no-auth, or bind 127.0.0.1.",
            stacklevel=3,
        )
    if instance.exists():
        shutil.rmtree(instance, ignore_errors=True)
    instance.mkdir(parents=True, mode=0o700)
    (instance / "logs").mkdir()
    tmp = _short_tmp(instance)
    try:
        store, models = prepare_store(source, instance, name=name, **archive_options)
        grpc = free_loopback_ports(2, avoid={port, management_port, metrics_port})
        config = write_config(
            instance / _CONFIG_FILE, store, models, host, port, management_port,
            metrics_port, auth, default_workers, grpc,
        )  # fmt: skip
    except BaseException:
        _remove_instance(instance)
        raise
    cmd = [sys.executable, "-m", "ts.model_server", "--start", "--foreground",
           "--ts-config", str(config), "--model-store", str(store), "--ncs"]  # fmt: skip
    if not auth:
        cmd.append("--disable-token-auth")
    env = {
        **os.environ,
        "TMPDIR": str(tmp),  # TorchServe's pid file
        "TEMP": str(tmp),  # java.io.tmpdir: worker sockets and unpacked archives
        "LOG_LOCATION": str(instance / "logs"),
        "METRICS_LOCATION": str(instance / "logs"),
        "TS_DECODE_INPUT_REQUEST": "true",
    }
    out = None if foreground else open(instance / "torchserve.out", "wb")  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            cmd, cwd=instance, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    finally:
        if out is not None:
            out.close()
    _CHILDREN[proc.pid] = proc
    create_time = None
    with contextlib.suppress(psutil.Error):  # None if it already exited; `started` stands in
        create_time = psutil.Process(proc.pid).create_time()
    info = ServerInfo(
        pid=proc.pid, host=host, port=int(port), management_port=int(management_port),
        metrics_port=int(metrics_port), auth=auth, models=models, store=str(store),
        instance=str(instance), create_time=create_time,
    )  # fmt: skip
    (instance / _SERVER_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    return info, proc


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
    """Start TorchServe in the background and return once every model is READY.

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
        **archive_options: passed to :func:`twinnet.serve.archive.build_archive`.
    """
    info, _ = _launch(
        source, host, port, management_port, metrics_port, auth, root, name, False,
        default_workers, archive_options,
    )  # fmt: skip
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

    This is the SageMaker container's entrypoint: ``store`` is ``/opt/ml/model`` (a ``.mar``
    or a store), ``host`` ``0.0.0.0``, ``port`` from ``SAGEMAKER_BIND_TO_PORT``, ``auth``
    False (SageMaker authenticates callers itself). SageMaker's ``GET /ping`` and
    ``POST /invocations`` are TorchServe's own routes on the inference port. Logs go to
    stdout. On SIGTERM the whole TorchServe process group is stopped before returning.

    Args:
        on_ready: optional callable given the :class:`ServerInfo` once the model is READY
            (``twinnet serve --foreground`` prints the URLs with it).

    Returns:
        TorchServe's exit status (0 after a requested stop).
    """
    info, proc = _launch(
        store, host, port, management_port, metrics_port, auth, root, name, True, None,
        archive_options,
    )  # fmt: skip
    stopping = {"flag": False}

    def _on_signal(signum: int, _frame: Any) -> None:
        stopping["flag"] = True

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            wait_ready(info, timeout, should_stop=lambda: stopping["flag"])
        except TwinnetError:
            if stopping["flag"]:
                return 0
            raise
        if on_ready is not None:
            on_ready(info)
        while not stopping["flag"] and proc.poll() is None:
            time.sleep(0.2)
        return 0 if stopping["flag"] else int(proc.returncode or 0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_info(info, timeout=30.0)


def status(root: str | os.PathLike | None = None, port: int | None = None) -> list[dict[str, Any]]:
    """One dict per server of ``root`` (optionally only ``port``): alive, URLs, worker states.

    A record whose server no longer runs (its pid exited, or now belongs to another program
    after a crash or reboot) is reported not alive and removed, with a logged warning.
    """
    out = []
    for info in list(list_servers(root)):
        if port is not None and info.port != port:
            continue
        reason = _stale_reason(info)
        entry: dict[str, Any] = {"info": info, "alive": reason is None, "models": {}}
        if reason is not None:
            _forget(info, reason)
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


def _stop_info(info: ServerInfo, timeout: float = 30.0) -> None:
    """SIGTERM TorchServe's JVM (its clean stop), then the group; SIGKILL what remains.

    Only for a server this process started or one whose identity was just checked: from
    here on the whole process group is signalled until no member is left.
    """
    java = _java_pid(info)
    if java is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(java) == info.pid:
                os.kill(java, signal.SIGTERM)
    deadline = time.monotonic() + timeout / 2
    while _group_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(info.pid):
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(info.pid, sig)
        deadline = time.monotonic() + (timeout / 4 if sig == signal.SIGTERM else 10)
        while _group_alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    child = _CHILDREN.pop(info.pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    _remove_instance(Path(info.instance), keep_logs=True)


def _remove_instance(instance: Path, keep_logs: bool = False) -> None:
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
    for name in (_KEY_FILE, _SERVER_FILE):
        (instance / name).unlink(missing_ok=True)


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
        reason = None if info.pid in _CHILDREN else _stale_reason(info)
        if reason is not None:
            _forget(info, reason)
            continue
        _stop_info(info, timeout)
        stopped.append(info)
    return stopped
