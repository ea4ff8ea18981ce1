"""Stopping a Ray Serve server: every process of its session, and its files.

A Ray server's processes are found by its session and by its Ray directory, never by a
recorded pid alone, so a pid that another program took after a crash is left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from twinnet.engines.ray.launch import RAY_TOKEN_FILE
from twinnet.engines.state import CHILDREN, ServerInfo, remove_instance
from twinnet.errors import TwinnetError

__all__ = ["server_processes", "stop_info", "reap", "remove_files"]


def _ray_dir(info: ServerInfo) -> str | None:
    tmp = Path(info.instance) / "tmp"
    return str(tmp.resolve()) if tmp.is_symlink() else None


def server_processes(info: ServerInfo, session: bool = True) -> list[psutil.Process]:
    """The live processes of the server: those naming its Ray directory on their command
    line and, with ``session`` (only while ``info.pid`` is known to be the server), every
    process of the server's session."""
    ray_dir = _ray_dir(info)
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if (session and os.getsid(proc.pid) == info.pid) or (
                ray_dir and any(ray_dir in arg for arg in proc.cmdline())
            ):
                found.append(proc)
    return found


def _wait_gone(info: ServerInfo, seconds: float, session: bool = True) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    child = CHILDREN.get(info.pid)
    while True:
        if child is not None:
            child.poll()  # reap the server process, so that it does not linger as a zombie
        left = server_processes(info, session)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def _kill(info: ServerInfo, procs: list[psutil.Process], session: bool) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    left = _wait_gone(info, 10.0, session)
    child = CHILDREN.pop(info.pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    if left:
        raise TwinnetError(
            f"processes of the Ray Serve server on port {info.port} would not stop: "
            f"{', '.join(str(p.pid) for p in left)}"
        )


def remove_files(instance: Path, keep_logs: bool = False) -> None:
    shutil.rmtree(instance / "model", ignore_errors=True)
    for name in (RAY_TOKEN_FILE, "ray-status.json", "ray-status.tmp"):
        (instance / name).unlink(missing_ok=True)
    remove_instance(instance, keep_logs=keep_logs)


def stop_info(info: ServerInfo, timeout: float = 30.0) -> None:
    """Stop the server and every Ray process of its session; returns once none is left.

    The server process gets SIGTERM (it deletes the application and shuts down the Ray
    instance it started); whatever is left after ``timeout`` gets SIGKILL. Only for a server
    this process started or one whose identity was just checked.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(info.pid, signal.SIGTERM)
    _kill(info, _wait_gone(info, timeout), session=True)
    remove_files(Path(info.instance), keep_logs=True)


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def reap(info: ServerInfo) -> None:
    """After the server process died: kill the Ray processes it left and remove its files.

    Those left are the ones naming its Ray directory and, while its pid is free, those of its
    session: Linux gives no new process a pid that a live session still uses, so a session
    whose leader is gone is the server's. A recorded pid that runs again is another program's,
    and then only the Ray directory counts.
    """
    session = _dead(info.pid)
    _kill(info, server_processes(info, session=session), session=session)
    remove_files(Path(info.instance), keep_logs=True)
