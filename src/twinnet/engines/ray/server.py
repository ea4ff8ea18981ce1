"""Start, watch and stop a Ray Serve server for a twinnet model (``twinnet serve --engine ray``).

The server is one process owned by twinnet, :mod:`.ray_launch`, started in a session of its
own and recorded like a TorchServe server (:mod:`.state`, ``server.json`` with ``engine:
ray``), so ``twinnet serve --status`` / ``--stop`` and the clients' token lookup work the same
for both engines. Its instance directory ``<state root>/<port>/`` holds:

    ray.json          the launch record (:class:`~.ray_launch.RayConfig`)
    ray-status.json   what the server process reports: starting, ready (replica states), failed
    key_file.json     the inference key, in TorchServe's key-file format (when auth is on)
    ray_token         the Ray instance's own cluster token (a Ray instance of this machine only)
    model/            the model directory's files (and gallery index) the replicas load
    logs/ray.out      the server process's output
    tmp/              a link to the Ray instance's temporary directory (sessions, sockets, logs)

Every Ray process of a local instance (GCS, raylet, agents, Serve's controller and proxy,
the replicas) runs in the server process's session: :func:`stop_info` asks the server to shut
Ray down, then kills whatever of that session is left, and returns once nothing is.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from twinnet.contract.gallery import check_index, stage_index
from twinnet.contract.options import ServeOptions
from twinnet.core.spec import SPEC_FILE, ModelSpec
from twinnet.engines.health import http_get, poll_ready
from twinnet.engines.ports import free_loopback_ports, port_free, warn_if_open
from twinnet.engines.ray import haproxy
from twinnet.engines.ray.haproxy import INGRESS_HAPROXY, INGRESS_PROXY
from twinnet.engines.ray.launch import RAY_CONFIG_FILE, RAY_TOKEN_FILE, RayConfig, read_status
from twinnet.engines.ray.stop import reap, remove_files, server_processes, stop_info
from twinnet.engines.registry import engine_of
from twinnet.engines.state import (
    KEY_FILE,
    ServerInfo,
    instance_dir,
    load_info,
)
from twinnet.engines.supervise import ready_or_stopped, run_until_stopped
from twinnet.engines.torchserve.archive import archive_files
from twinnet.engines.torchserve.launch import spawn
from twinnet.errors import TwinnetError

__all__ = [
    "RAY_HINT",
    "check_ray",
    "ingress_of",
    "parse_address",
    "reap",
    "replica_states",
    "run_foreground",
    "server_processes",
    "start",
    "stop_info",
]

RAY_HINT = "Ray Serve is not installed; install it with pip install 'twinnet[ray]'"
_SERVER_OUT = "ray.out"


def check_ray() -> None:
    """Raise a TwinnetError saying how to install Ray Serve when it is missing."""
    for module in ("ray", "starlette", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            raise TwinnetError(RAY_HINT)


def parse_address(address: str | None) -> str | None:
    """``None`` (a Ray instance on this machine), ``auto``, ``ray://HOST:PORT`` or ``HOST:PORT``."""
    if address is None:
        return None
    text = address.strip()
    if text == "auto":
        return text
    rest = text[len("ray://") :] if text.startswith("ray://") else text
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in rest:
        raise TwinnetError(
            f"--address must be 'auto', ray://HOST:10001 (Ray Client) or HOST:6379 (the head "
            f"node's GCS), got {address!r}"
        )
    return text


def _model_source(source: str | os.PathLike) -> Path:
    src = Path(source)
    if (src / SPEC_FILE).is_file():
        return src
    if not src.exists():
        raise TwinnetError(f"{src} does not exist")
    raise TwinnetError(
        f"{src} is not a model directory (no {SPEC_FILE}): Ray Serve serves a model directory; "
        "give the one the archive was built from"
    )


def _stage_model(
    src: Path, dest: Path, options: ServeOptions, index: str | os.PathLike | None
) -> ServeOptions:
    """Copy what an archive would take (the model files, a checked gallery index) to ``dest``."""
    files = archive_files(src)
    checked = None
    if index is not None:
        checked = check_index(src, index)
        options = checked.serving_options(options)
    dest.mkdir()
    for path in files:
        shutil.copy2(path, dest / path.name)
    if checked is not None:
        stage_index(checked, dest)
    return options


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _key_file(key: str) -> str:
    """The key in TorchServe's key-file format, which :func:`~.state.read_keys` reads."""
    import json

    return json.dumps({"inference": {"key": key}}, indent=2) + "\n"


def _ray_tmp(instance: Path) -> Path:
    """A short temporary directory for the Ray instance (its socket paths must stay short),
    linked from the instance directory so that removing the instance removes it."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    tmp = Path(tempfile.mkdtemp(prefix="twinnet-ray-", dir=base))
    (instance / "tmp").symlink_to(tmp)
    return tmp


def _spawn(config_path: Path, instance: Path, env: dict[str, str], foreground: bool) -> Any:
    cmd = [sys.executable, "-m", "twinnet.engines.ray.launch", str(config_path)]
    return spawn(cmd, instance, env, None if foreground else instance / "logs" / _SERVER_OUT)


def _has_ray_token(env: dict[str, str]) -> bool:
    """Whether Ray finds a cluster token: the variables, else ``~/.ray/auth_token``."""
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        return True
    return (Path.home() / ".ray" / "auth_token").is_file()


def _environment(instance: Path, address: str | None) -> dict[str, str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}  # nothing leaves the machine
    if address is not None:
        if address.startswith("ray://") and "RAY_AUTH_MODE" not in env and _has_ray_token(env):
            # Ray turns token auth on by itself when it finds a token, except for Ray Client
            # (ray://), which then connects without it and times out.
            env["RAY_AUTH_MODE"] = "token"
        return env
    # The instance's own cluster token, kept in the instance, not in ~/.ray.
    token = instance / RAY_TOKEN_FILE
    _write_secret(token, secrets.token_hex(32))
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    # A one-machine Ray: the node's address is loopback (Ray otherwise swaps 127.0.0.1 for
    # the machine's network address), so its servers bind loopback too.
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    return env


def _check_can_launch(
    instance: Path, host: str, port: int, auth: bool, address: str | None
) -> None:
    """Refuse a port that is taken or invalid; clean up after a dead server; warn when open."""
    old = load_info(instance)
    if old is not None and old.alive():
        raise TwinnetError(
            f"a twinnet server already runs on port {port} (pid {old.pid}); stop it with "
            "`twinnet serve --stop` or choose another --port"
        )
    if old is not None:
        engine_of(old).reap(old)  # what a server that died left behind, before its record goes
    if not 0 < int(port) < 65536:
        raise TwinnetError(f"inference port {port} is not a valid port number")
    if address is None and not port_free(host, port):
        raise TwinnetError(
            f"inference port {port} on {host} is already in use (another server? see "
            "`twinnet serve --status`); choose another with --port"
        )
    warn_if_open(host, auth, stacklevel=3)


def _write_config(
    instance: Path, model: str, host: str, port: int, options: ServeOptions,
    replicas: int | None, autoscale: tuple[int, int] | None, address: str | None, key: str | None,
    temp_dir: Path | None, ingress: str,
) -> Path:  # fmt: skip
    """The launch record the server process reads, in the instance directory."""
    from twinnet.engines.ray.ingress import key_digest

    config = RayConfig(
        name=model, model_dir=str(instance / "model"), host=host, port=int(port),
        options=options.to_dict(), replicas=replicas,
        autoscale=list(autoscale) if autoscale else None, address=address,
        temp_dir=str(temp_dir) if temp_dir is not None else None,
        key_sha256=key_digest(key) if key else None, instance=str(instance), ingress=ingress,
    )  # fmt: skip
    path = instance / RAY_CONFIG_FILE
    config.save(path)
    return path


def launch(
    source: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8080,
    auth: bool = True,
    root: str | os.PathLike | None = None,
    name: str | None = None,
    options: ServeOptions | None = None,
    replicas: int | None = None,
    autoscale: tuple[int, int] | str | None = None,
    address: str | None = None,
    index: str | os.PathLike | None = None,
    foreground: bool = False,
) -> tuple[ServerInfo, Any]:
    """Start the server process (not waiting for the model) and record it; see :func:`start`."""
    check_ray()
    from twinnet.engines.ray.engine import parse_autoscale, plan

    src = _model_source(source)
    address = parse_address(address)
    if isinstance(autoscale, str):
        autoscale = parse_autoscale(autoscale)
    options = options or ServeOptions()
    plan(options, replicas, autoscale, 1)  # refuse a bad replica request here, not in Ray
    model = name or ModelSpec.load(src).name
    if not model or not model.replace("-", "").replace("_", "").isalnum():
        raise TwinnetError(f"model name must be letters, digits, '-' or '_', got {model!r}")
    instance = instance_dir(port, root)
    _check_can_launch(instance, host, port, auth, address)
    if instance.exists():
        shutil.rmtree(instance, ignore_errors=True)
    instance.mkdir(parents=True, mode=0o700)
    (instance / "logs").mkdir()
    try:
        options = _stage_model(src, instance / "model", options, index)
        key = secrets.token_urlsafe(18) if auth else None
        if key is not None:
            _write_secret(instance / KEY_FILE, _key_file(key))
        temp_dir = _ray_tmp(instance) if address is None else None
        # HAProxy on the HTTP port of a Ray instance of our own, when there is one (.haproxy)
        front = {} if temp_dir is None else haproxy.environment(
            temp_dir, port, free_loopback_ports(4, {port})
        )  # fmt: skip
        env = {**_environment(instance, address), **front}
        ingress = INGRESS_HAPROXY if front else INGRESS_PROXY
        config_path = _write_config(
            instance, model, host, port, options, replicas, autoscale, address, key, temp_dir,
            ingress,
        )  # fmt: skip
    except BaseException:
        remove_files(instance)
        raise
    proc = _spawn(config_path, instance, env, foreground)
    create_time = None
    with contextlib.suppress(psutil.Error):
        create_time = psutil.Process(proc.pid).create_time()
    info = ServerInfo(
        pid=proc.pid, host=host, port=int(port), management_port=0, metrics_port=0, auth=auth,
        models=[model], store=str(instance / "model"), instance=str(instance),
        create_time=create_time, engine="ray", config=RAY_CONFIG_FILE,
    )  # fmt: skip
    info.save()
    return info, proc


def _log_tail(info: ServerInfo, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        text = (info.log_dir / _SERVER_OUT).read_text(errors="replace").strip().splitlines()
        if text:
            return "\n".join(text[-lines:])
    return "(no output)"


def wait_ready(info: ServerInfo, timeout: float = 300.0, should_stop: Any = None) -> float:
    """Block until the application runs and answers ``/ping``; returns the seconds waited."""
    ping = f"{info.inference_url}/ping"

    def ready() -> bool:
        status = read_status(info.instance)
        if status.get("state") == "failed":
            lines = [x.strip() for x in str(status.get("message", "")).splitlines() if x.strip()]
            raise TwinnetError(
                f"Ray Serve could not start the model: {lines[-1] if lines else 'no reason given'}"
                f" (the error in full is in {info.log_dir / _SERVER_OUT})"
            )
        if status.get("state") != "ready":
            return False
        if RayConfig.load(info.config_file).address is not None:
            return True  # the proxies run where the cluster puts them
        with contextlib.suppress(OSError):
            return http_get(ping, timeout=2.0)[0] == 200
        return False

    return poll_ready(
        info, ready, "the Ray Serve server", lambda: _log_tail(info), timeout, should_stop
    )


def start(source: str | os.PathLike, timeout: float = 300.0, **kwargs: Any) -> ServerInfo:
    """Serve a model directory with Ray Serve in the background; returns once it answers.

    Args:
        source: a model directory.
        timeout: seconds to wait for the replicas.
        host, port: where Serve's HTTP proxy listens (default ``127.0.0.1:8080``).
        auth: require ``Authorization: Bearer <key>`` on the prediction routes; the key is
            written to ``<instance>/key_file.json``, where local clients find it.
        root: the state root (default ``$TWINNET_HOME/serve`` or ``~/.cache/twinnet/serve``).
        name: the model name (default: the spec's name).
        options: :class:`~twinnet.contract.options.ServeOptions` (batching, threads, precision,
            default response format), as for an archive.
        replicas: a fixed replica count; or ``autoscale=(MIN, MAX)`` (or ``"MIN:MAX"``).
        address: a Ray cluster to join (``auto``, ``ray://HOST:10001``); default: a Ray
            instance on this machine, bound to loopback, that stops with the server.
        index: a gallery index to serve with the model (identification requests).
    """
    info, _ = launch(source, **kwargs)
    return ready_or_stopped(info, wait_ready, stop_info, timeout)


def run_foreground(
    source: str | os.PathLike, timeout: float = 300.0, on_ready: Any = None, **kwargs: Any
) -> int:
    """The same server with its output on this terminal, until SIGTERM/SIGINT or its exit."""
    info, proc = launch(source, foreground=True, **kwargs)
    return run_until_stopped(info, proc, wait_ready, stop_info, timeout, on_ready)


def ingress_of(info: ServerInfo) -> str:
    """What answers the HTTP port, in words: HAProxy in front of the replicas, or Serve's proxy."""
    try:
        ingress = RayConfig.load(info.config_file).ingress
    except (OSError, ValueError, TypeError):
        return "unknown"
    if ingress == INGRESS_HAPROXY:
        return "HAProxy, replicas answer HTTP directly"
    return "Ray Serve's proxy"


def replica_states(info: ServerInfo) -> dict[str, list[str]]:
    """``{model: [replica state, ...]}`` from the server's last report."""
    states = read_status(info.instance).get("replicas") or {}
    flat = [state for state, n in sorted(states.items()) for _ in range(int(n))]
    return {model: flat for model in info.models}
