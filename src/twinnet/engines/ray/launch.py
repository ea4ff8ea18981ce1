"""The Ray Serve server process: ``python -m twinnet.engines.ray.launch <instance>/ray.json``.

``twinnet serve --engine ray`` starts this module in a session of its own
(:mod:`.ray_server`). It is the Ray driver for as long as the server runs:

1. starts a Ray instance on this machine (loopback only, no dashboard, its files in the
   server's own temporary directory, its cluster token in the instance directory) or
   connects to the cluster at ``address``;
2. starts Serve's HTTP proxy on ``host:port`` and runs the application of
   :mod:`.ray_engine` under the model's name, route prefix ``/``;
3. writes ``ray-status.json`` (``starting``, ``ready`` with the replicas' states every few
   seconds, or ``failed`` with the reason) for ``twinnet serve`` and ``--status``;
4. on SIGTERM or SIGINT deletes the application and shuts Ray down: a Ray instance it
   started goes with it (``twinnet serve --stop`` then makes sure no process is left), a
   cluster keeps running without the application.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twinnet.contract.options import ServeOptions, usable_cpus

# The launch record in the instance directory; its path on the command line is what tells
# this server's process from another one with the same pid.

__all__ = ["RAY_CONFIG_FILE", "STATUS_FILE", "RayConfig", "main", "read_status"]

#: The launch record in the instance directory, named on the server's command line.
RAY_CONFIG_FILE = "ray.json"
#: The Ray instance's own cluster token (Ray enables token auth on new local instances).
RAY_TOKEN_FILE = "ray_token"

#: What the server process reports about itself.
STATUS_FILE = "ray-status.json"
#: Seconds between two status reports.
STATUS_PERIOD_S = 2.0

logger = logging.getLogger(__name__)


@dataclass
class RayConfig:
    """Everything the server process needs, written by ``twinnet serve`` as JSON.

    Attributes:
        name: the model name, served at ``/predictions/<name>`` and the application's name.
        model_dir: the model directory's files, staged in the instance directory.
        host, port: Serve's HTTP proxy address.
        options: :class:`~twinnet.contract.options.ServeOptions` fields.
        replicas, autoscale: a fixed replica count, or ``[MIN, MAX]`` for the autoscaler.
        address: a Ray cluster (``auto``, ``ray://HOST:10001``, ``HOST:6379``); None starts
            a Ray instance on this machine.
        temp_dir: that instance's temporary directory (short: Ray puts sockets in it).
        key_sha256: the digest of the inference key; None when authorization is off.
        instance: the instance directory.
        ingress: what listens on ``host:port``: ``haproxy`` (replicas answer HTTP directly,
            :mod:`.haproxy`) or ``proxy`` (Serve's Python proxy).
    """

    name: str
    model_dir: str
    host: str
    port: int
    options: dict[str, Any]
    replicas: int | None
    autoscale: list[int] | None
    address: str | None
    temp_dir: str | None
    key_sha256: str | None
    instance: str
    ingress: str = "proxy"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> RayConfig:
        return cls(**json.loads(Path(path).read_text()))

    @property
    def status_file(self) -> Path:
        return Path(self.instance) / STATUS_FILE


def write_status(path: Path, state: str, **extra: Any) -> None:
    """Replace the status file at once (readers never see half of it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"state": state, "pid": os.getpid(), "time": time.time(), **extra}))
    os.replace(tmp, path)


def read_status(instance: str | os.PathLike) -> dict[str, Any]:
    """The last status the server process wrote (``{}`` when none yet)."""
    try:
        data = json.loads((Path(instance) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT, so a slow start-up stops at once too."""


def _on_signal(signum: int, _frame: Any) -> None:
    for s in (signal.SIGTERM, signal.SIGINT):  # one stop; shutting down must not be cut short
        signal.signal(s, signal.SIG_IGN)
    raise _Stop(signum)


def _connect(config: RayConfig) -> int | None:
    """Start or join Ray; returns the local instance's CPUs (None on a cluster)."""
    import ray

    # The model directory is the job's working_dir: Ray uploads it to the cluster once, and
    # every replica (Serve deploys with the job's runtime_env) starts in an unpacked copy.
    runtime_env = {"working_dir": config.model_dir}
    if config.address:
        ray.init(
            address=config.address,
            runtime_env=runtime_env,
            log_to_driver=False,
            configure_logging=False,
        )
        return None
    cpus = usable_cpus()
    ray.init(
        runtime_env=runtime_env,
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=config.temp_dir,
    )
    return cpus


def _replica_states(serve: Any, name: str) -> dict[str, int]:
    app = serve.status().applications.get(name)
    if app is None:
        return {}
    states: dict[str, int] = {}
    for dep in app.deployments.values():
        for state, n in dep.replica_states.items():
            key = getattr(state, "value", str(state))
            states[key] = states.get(key, 0) + int(n)
    return states


def _failure(name: str) -> str | None:
    """Why the application's deployments failed, as Serve reports it (the replica's error)."""
    from ray import serve

    try:
        app = serve.status().applications.get(name)
    except Exception:
        return None
    if app is None:
        return None
    messages = [d.message for d in app.deployments.values() if d.message] or [app.message]
    return "\n".join(m for m in messages if m) or None


def _shutdown(config: RayConfig) -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if config.address:
            serve.delete(config.name)  # the cluster and its other applications stay
        else:
            serve.shutdown()
    except Exception:
        logger.warning("twinnet: stopping Serve failed", exc_info=True)
    ray.shutdown()


def run(config: RayConfig) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a requested stop, 1 when start-up failed."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, _on_signal)
    status = config.status_file
    write_status(status, "starting")
    try:
        from ray import serve

        from twinnet.engines.ray.engine import build_app, plan

        cpus = _connect(config)
        for s in (signal.SIGTERM, signal.SIGINT):  # ray.init put its own in place
            signal.signal(s, _on_signal)
        http = {"host": config.host, "port": config.port}
        serve.start(http_options=http, proxy_location="HeadOnly" if cpus else "EveryNode")
        options = ServeOptions(**config.options)
        autoscale = tuple(config.autoscale) if config.autoscale else None
        the_plan = plan(options, config.replicas, autoscale, cpus)  # type: ignore[arg-type]
        app = build_app(config.name, options, the_plan, config.key_sha256)
        serve.run(app, name=config.name, route_prefix="/")
        while True:
            write_status(
                status,
                "ready",
                replicas=_replica_states(serve, config.name),
                threads=the_plan.threads,
                num_cpus=the_plan.num_cpus,
            )
            time.sleep(STATUS_PERIOD_S)
    except _Stop:
        write_status(status, "stopping")
        logger.info("twinnet: stopping")
        return 0
    except Exception as exc:
        traceback.print_exc()
        message = _failure(config.name) or f"{exc.__class__.__name__}: {exc}"
        print(message, flush=True)
        write_status(status, "failed", message=message[-4000:])
        return 1
    finally:
        for s in (signal.SIGTERM, signal.SIGINT):  # shutting down must not be cut short
            signal.signal(s, signal.SIG_IGN)
        _shutdown(config)
        logger.info("twinnet: Ray is shut down")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m twinnet.engines.ray.launch INSTANCE/ray.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run(RayConfig.load(args[0]))


if __name__ == "__main__":
    sys.exit(main())
