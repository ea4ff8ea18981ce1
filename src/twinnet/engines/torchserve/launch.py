"""Launching TorchServe: checks, the model store, ``config.properties`` and the process.

Everything TorchServe would otherwise put in shared places (``/tmp/.model_server.pid``,
``/tmp/.ts.sock.9000``, ``./key_file.json``) goes into the server's instance directory
(:mod:`.state`), so several servers (tests, benchmarks, a SageMaker container) run side by
side without touching each other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from twinnet.contract.protocol import MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES
from twinnet.core.spec import SPEC_FILE, ModelSpec
from twinnet.engines.ports import free_loopback_ports, port_free, warn_if_open
from twinnet.engines.state import (
    CHILDREN,
    CONFIG_FILE,
    ServerInfo,
    instance_dir,
    load_info,
    remove_instance,
    url_host,
)
from twinnet.engines.torchserve.archive import build_archive
from twinnet.errors import TwinnetError

__all__ = [
    "DEFAULT_PORTS",
    "FRONTEND_MAX_REQUEST_BYTES",
    "JAVA_HINT",
    "check_java",
    "launch",
    "prepare_store",
    "spawn",
    "write_config",
]

DEFAULT_PORTS = (8080, 8081, 8082)
#: TorchServe's own cap. Twice the contract's 6 MB, so that bodies between 6 and 12 MB reach
#: the handler and get the contract's 413 error object; larger ones get TorchServe's bare 413.
FRONTEND_MAX_REQUEST_BYTES = 2 * MAX_REQUEST_BYTES
JAVA_HINT = (
    "TorchServe needs Java 17, and `java` was not found. Install it with "
    "`sudo apt-get install openjdk-17-jre-headless` (Debian/Ubuntu) or set JAVA_HOME"
)


# ---------------------------------------------------------------------------- checks
def check_java() -> str:
    """The java executable TorchServe will use, or a TwinnetError saying how to install it."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise TwinnetError(JAVA_HINT)
    return java


def _check_ports(host: str, ports: dict[str, int]) -> None:
    if len(set(ports.values())) != len(ports):
        raise TwinnetError(f"ports must differ, got {ports}")
    for what, port in ports.items():
        bind = host if what == "inference" else "127.0.0.1"
        if not 0 < port < 65536:
            raise TwinnetError(f"{what} port {port} is not a valid port number")
        if not port_free(bind, port):
            flag = "--port" if what == "inference" else f"--{what}-port"
            raise TwinnetError(
                f"{what} port {port} on {bind} is already in use (another server? see "
                f"`twinnet serve --status`); choose another with {flag}"
            )


def _check_can_launch(host: str, ports: dict[str, int], auth: bool, instance: Path) -> None:
    """Java, TorchServe, free ports and no live server of ours on the port; warn on open auth."""
    check_java()
    try:
        import ts  # noqa: F401
    except ImportError:
        raise TwinnetError(
            "TorchServe is not installed; install it with pip install 'twinnet[serve]'"
        ) from None
    old = load_info(instance)
    if old is not None and old.alive():
        raise TwinnetError(
            f"a twinnet server already runs on port {ports['inference']} (pid {old.pid}); "
            "stop it with `twinnet serve --stop` or choose another --port"
        )
    _check_ports(host, ports)
    warn_if_open(host, auth, stacklevel=4)


# ---------------------------------------------------------------------------- store
def prepare_store(
    source: str | os.PathLike, workdir: Path, name: str | None = None, **archive_options: Any
) -> tuple[Path, list[str]]:
    """A model store and the model names in it, from a model directory, a store or a ``.mar``.

    ``archive_options`` go to :func:`~twinnet.engines.torchserve.archive.build_archive` when ``source``
    is a model directory; an archive that exists keeps the options it was built with.
    """
    src = Path(source)
    if (src / SPEC_FILE).is_file():
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
    bind = url_host(host) if host not in ("0.0.0.0", "::") else host
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


# ---------------------------------------------------------------------------- the process
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


def _spawn(cmd: list[str], instance: Path, tmp: Path, foreground: bool) -> subprocess.Popen:
    """Start TorchServe in a session of its own, its scratch files inside ``instance``."""
    env = {
        **os.environ,
        "TMPDIR": str(tmp),  # TorchServe's pid file
        "TEMP": str(tmp),  # java.io.tmpdir: worker sockets and unpacked archives
        "LOG_LOCATION": str(instance / "logs"),
        "METRICS_LOCATION": str(instance / "logs"),
        "TS_DECODE_INPUT_REQUEST": "true",
    }
    return spawn(cmd, instance, env, None if foreground else instance / "torchserve.out")


def spawn(cmd: list[str], cwd: Path, env: dict[str, str], log: Path | None) -> subprocess.Popen:
    """Start a server process in a session of its own, so a stop reaches its whole tree.

    Its output goes to ``log``, or to this terminal when ``log`` is None (foreground).
    """
    out = None if log is None else open(log, "wb")  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    finally:
        if out is not None:
            out.close()
    CHILDREN[proc.pid] = proc
    return proc


def launch(
    source: str | os.PathLike,
    host: str,
    ports: dict[str, int],
    auth: bool,
    root: str | os.PathLike | None,
    name: str | None,
    foreground: bool,
    default_workers: int | None,
    archive_options: dict[str, Any],
) -> tuple[ServerInfo, subprocess.Popen]:
    """Start TorchServe (not waiting for the model) and record it in its instance directory.

    Args:
        ports: ``{"inference": ..., "management": ..., "metrics": ...}``.
        foreground: output to this process's stdout instead of ``torchserve.out``.
        Others: see :func:`twinnet.engines.server.start`.
    """
    instance = instance_dir(ports["inference"], root)
    _check_can_launch(host, ports, auth, instance)
    if instance.exists():
        shutil.rmtree(instance, ignore_errors=True)
    instance.mkdir(parents=True, mode=0o700)
    (instance / "logs").mkdir()
    tmp = _short_tmp(instance)
    try:
        store, models = prepare_store(source, instance, name=name, **archive_options)
        grpc = free_loopback_ports(2, avoid=set(ports.values()))
        config = write_config(
            instance / CONFIG_FILE, store, models, host, ports["inference"],
            ports["management"], ports["metrics"], auth, default_workers, grpc,
        )  # fmt: skip
    except BaseException:
        remove_instance(instance)
        raise
    cmd = [sys.executable, "-m", "ts.model_server", "--start", "--foreground",
           "--ts-config", str(config), "--model-store", str(store), "--ncs"]  # fmt: skip
    if not auth:
        cmd.append("--disable-token-auth")
    proc = _spawn(cmd, instance, tmp, foreground)
    create_time = None
    with contextlib.suppress(psutil.Error):  # None if it already exited; `started` stands in
        create_time = psutil.Process(proc.pid).create_time()
    info = ServerInfo(
        pid=proc.pid, host=host, port=int(ports["inference"]),
        management_port=int(ports["management"]), metrics_port=int(ports["metrics"]),
        auth=auth, models=models, store=str(store), instance=str(instance),
        create_time=create_time,
    )  # fmt: skip
    info.save()
    return info, proc
