"""`twinnet serve --status/--stop` with a record left behind by a crash or a reboot.

The recorded pid may now belong to any program. It must be left running, and the stale
record removed with a message; a process that really is the recorded server is still found.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from twinnet.engines import server

pytestmark = pytest.mark.unit

CLI = [sys.executable, "-m", "twinnet"]


@pytest.fixture
def stranger():
    """Another program in a process group of its own, as after a reboot reused the pid."""
    proc = subprocess.Popen(["setsid", "sleep", "600"])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(proc.pid).cmdline() != ["sleep", "600"]:  # setsid, then exec
            assert time.monotonic() < deadline, "setsid sleep 600 did not start"
            time.sleep(0.01)
        assert os.getpgid(proc.pid) == proc.pid  # a group leader, as a server's launcher is
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _record(home: Path, port: int, pid: int, **fields) -> Path:
    """Write ``server.json`` as a server on ``port`` would have, before it crashed."""
    instance = server.instance_dir(port, home / "serve")
    instance.mkdir(parents=True, exist_ok=True)
    info = {
        "pid": pid, "host": "127.0.0.1", "port": port, "management_port": port + 1,
        "metrics_port": port + 2, "auth": True, "models": ["twin"],
        "store": str(instance / "store"), "instance": str(instance),
        "started": time.time() - 3600, **fields,
    }  # fmt: skip
    (instance / "server.json").write_text(json.dumps(info))
    (instance / "key_file.json").write_text("{}")
    return instance


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TWINNET_HOME": str(home)}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


RECORDS = {
    "record-with-start-time": {"create_time": time.time() - 3600},
    "record-without-start-time": {},  # written before start times were recorded
    "start-time-matches": "stranger's",  # only the command line tells them apart
}


@pytest.mark.parametrize("kind", list(RECORDS))
@pytest.mark.parametrize("action", ["--status", "--stop"])
def test_stale_record_is_cleared_and_the_program_with_its_pid_survives(
    tmp_path, stranger, kind, action
):
    home, port = tmp_path / "home", 18080
    extra = RECORDS[kind]
    if extra == "stranger's":
        extra = {"create_time": psutil.Process(stranger.pid).create_time()}
    instance = _record(home, port, stranger.pid, **extra)

    result = _cli(home, "serve", action, "--port", str(port))

    time.sleep(0.2)  # a signal, had one been sent, has landed by now
    assert stranger.poll() is None, f"{action} signalled an unrelated program"
    assert psutil.Process(stranger.pid).status() != psutil.STATUS_ZOMBIE
    if action == "--status":
        assert result.returncode == 1, result.stdout
        assert f"port {port}: not running" in result.stdout
    else:
        assert result.returncode == 0, result.stderr
        assert "stopped" not in result.stdout
        assert "no twinnet server is running" in result.stdout
    assert "stale record" in result.stderr
    assert f"pid {stranger.pid} now belongs to another program (sleep 600)" in result.stderr
    assert not (instance / "server.json").exists()
    assert not (instance / "key_file.json").exists()
    assert _cli(home, "serve", "--status").stdout.strip() == "no twinnet server is running"


def test_record_of_an_exited_server_is_cleared(tmp_path):
    home, port = tmp_path / "home", 18090
    gone = subprocess.Popen(["true"])
    gone.wait()
    instance = _record(home, port, gone.pid)
    result = _cli(home, "serve", "--stop", "--port", str(port))
    assert result.returncode == 0 and "no twinnet server is running" in result.stdout
    assert f"pid {gone.pid} is not running" in result.stderr
    assert not (instance / "server.json").exists()


def test_a_process_that_is_the_recorded_server_is_still_found(tmp_path):
    """The check must not refuse the real thing: same config file, same start time."""
    root, port = tmp_path / "serve", 18100
    instance = server.instance_dir(port, root)
    instance.mkdir(parents=True)
    config = str(instance / "config.properties")
    code = "import time; time.sleep(600)"
    launcher = subprocess.Popen(
        [sys.executable, "-c", code, "--ts-config", config], start_new_session=True
    )
    try:
        _record(
            tmp_path, port, launcher.pid, create_time=psutil.Process(launcher.pid).create_time()
        )
        (entry,) = server.status(root=root)
        assert entry["alive"] and entry["info"].pid == launcher.pid
        (stopped,) = server.stop(root=root, timeout=5)
        assert stopped.pid == launcher.pid
        assert launcher.wait(timeout=10) == -signal.SIGTERM
        assert not (instance / "server.json").exists()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
