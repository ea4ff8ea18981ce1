"""Wait for a launched server, in the background or in the foreground (both engines)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from twinnet.errors import TwinnetError

__all__ = ["ready_or_stopped", "run_until_stopped"]


def ready_or_stopped(
    info: Any, wait_ready: Callable[..., Any], stop: Callable[[Any], None], timeout: float
) -> Any:
    """``info`` once its server is ready; a server that fails to get there is stopped first."""
    try:
        wait_ready(info, timeout)
    except BaseException:
        stop(info)
        raise
    return info


def run_until_stopped(
    info: Any,
    proc: Any,
    wait_ready: Callable[..., Any],
    stop: Callable[[Any], None],
    timeout: float,
    on_ready: Callable[[Any], None] | None = None,
) -> int:
    """Wait for ``info``'s server to be ready, then until a signal or ``proc``'s exit; stop it.

    A signal during start-up ends the wait quietly. Returns 0 after a requested stop, else
    the server process's exit status. ``stop`` always runs, so nothing is left behind.
    """
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
        stop(info)
