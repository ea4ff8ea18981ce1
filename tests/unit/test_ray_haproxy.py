"""HAProxy in front of a local Ray instance: the settings Serve gets, and the loopback rewrite
of HAProxy's configuration that runs before HAProxy starts."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from twinnet.engines.ray import haproxy

pytestmark = pytest.mark.unit

# The shape of the configuration Serve 2.60 writes (its template, abridged).
CONFIG = """global
    stats socket /tmp/x/admin.sock mode 666 level admin expose-fd listeners
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 0.0.0.0:8080
backend http-twin
    server SERVE_REPLICA_a 127.0.0.1:30000 check
listen stats
  bind *:8404
  stats enable
frontend grpc
    bind [::]:9000 proto h2
"""


def _executable(path: Path, body: str = "") -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o700)
    return path


def test_every_bind_but_the_serving_port_moves_to_loopback():
    fixed = haproxy.loopback_binds(CONFIG, port=8080)
    binds = [line.split()[1] for line in fixed.splitlines() if line.strip().startswith("bind ")]
    # the serving port keeps the host it was given (--host 0.0.0.0 is the user's choice)
    assert binds == ["127.0.0.1:9101", "0.0.0.0:8080", "127.0.0.1:8404", "127.0.0.1:9000"]
    assert "bind 127.0.0.1:9000 proto h2" in fixed  # what follows the address stays
    assert "server SERVE_REPLICA_a 127.0.0.1:30000 check" in fixed  # not a bind: untouched
    assert haproxy.loopback_binds(fixed, port=8080) == fixed


def test_the_launcher_rewrites_the_configuration_then_runs_haproxy(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG)
    # prints what it was run with, as HAProxy would get it
    fake = _executable(tmp_path / "fake-haproxy", 'echo "ran: $*"\n')
    run = subprocess.run(
        [sys.executable, "-m", "twinnet.engines.ray.haproxy", "--port", "8080", str(fake),
         "-db", "-f", str(cfg), "-dR"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert run.stdout.strip() == f"ran: -db -f {cfg} -dR"
    assert "bind *:8404" not in cfg.read_text() and "bind 127.0.0.1:8404" in cfg.read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "twinnet.engines.ray.haproxy", str(fake)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode != 0 and "usage" in bad.stderr


def test_serve_gets_its_own_ports_and_files_and_a_launcher_script(tmp_path, monkeypatch):
    fake = _executable(tmp_path / "haproxy-bin")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(fake))
    monkeypatch.delenv("TWINNET_RAY_INGRESS", raising=False)
    env = haproxy.environment(tmp_path / "ray", 8080, (41001, 41002, 41003, 41004))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert [env[f"RAY_SERVE_{k}"] for k in ("HAPROXY_STATS_PORT", "HAPROXY_METRICS_PORT",
            "FALLBACK_PROXY_HTTP_PORT", "FALLBACK_PROXY_GRPC_PORT")] == ["41001", "41002", "41003", "41004"]  # fmt: skip
    for key in ("CONFIG_FILE_LOC", "SOCKET_PATH", "METRICS_SOCKET_PATH", "SERVER_STATE_FILE"):
        assert env[f"RAY_SERVE_HAPROXY_{key}"].startswith(str(tmp_path / "ray")), key
    script = Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"])
    assert script.parent == tmp_path / "ray" / "hap"
    assert os.stat(script).st_mode & stat.S_IXUSR
    text = script.read_text()
    assert "twinnet.engines.ray.haproxy --port 8080" in text and str(fake) in text


def test_without_haproxy_or_when_asked_serve_keeps_its_own_proxy(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(tmp_path / "missing"))
    assert haproxy.find_binary() is None
    assert haproxy.environment(tmp_path, 8080, (1, 2, 3, 4)) == {}
    fake = _executable(tmp_path / "haproxy-bin")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", str(fake))
    monkeypatch.setenv("TWINNET_RAY_INGRESS", "proxy")
    assert haproxy.environment(tmp_path, 8080, (1, 2, 3, 4)) == {}
