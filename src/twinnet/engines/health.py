"""Asking a running TorchServe how its models are: the management API, and readiness.

Every call to a server's management API goes through :func:`http_get`, on urllib3 (the HTTP
stack under ``requests``, which the clients use). :func:`model_ready` is the one definition
of "ready" that both ``twinnet serve`` (:func:`wait_ready`) and the SageMaker container's
``/ping`` use.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3

from twinnet.engines.state import ServerInfo, read_keys
from twinnet.errors import TwinnetError

__all__ = ["describe_model", "http_get", "model_ready", "wait_ready"]

#: Connections to local servers, kept open between polls. No retries: callers poll.
_POOL = urllib3.PoolManager(num_pools=16, retries=False)


def http_get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """``(status, body)`` of a GET; a connection failure or a timeout is a ConnectionError."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = _POOL.request("GET", url, headers=headers, timeout=timeout)
    except urllib3.exceptions.HTTPError as exc:
        raise ConnectionError(f"GET {url}: {exc}") from None
    return resp.status, resp.data


def describe_model(info: ServerInfo, name: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The management API's description of ``name``: one dict per version, with ``workers``.

    An answer other than 200 or one that is not a JSON list gives ``[]``; a server that
    cannot be reached raises ConnectionError (an OSError).
    """
    token = read_keys(info.key_file).get("management") if info.auth else None
    code, body = http_get(f"{info.management_url}/models/{name}", token, timeout)
    if code != 200:
        return []
    try:
        data = json.loads(body)
    except ValueError:
        return []
    return data if isinstance(data, list) else []


def model_ready(info: ServerInfo, name: str, timeout: float = 2.0) -> bool:
    """True when model ``name`` has at least one READY worker: it can answer a request now.

    Not "every worker READY": TorchServe sends each request to a READY worker and restarts a
    worker that dies, so with one worker down the model still answers, only with less
    throughput. Waiting for all of them would make ``/ping`` fail while a worker restarts
    (and SageMaker replace an instance that serves), and would make start-up wait for the
    slowest worker, or for ever when one of them cannot load.
    """
    try:
        desc = describe_model(info, name, timeout)
    except OSError:
        return False
    return any(w.get("status") == "READY" for v in desc for w in v.get("workers", []))


def log_tail(info: ServerInfo, lines: int = 15) -> str:
    """The last lines of the server's output or logs, for an error message."""
    for name in ("torchserve.out", "logs/ts_log.log", "logs/model_log.log"):
        path = Path(info.instance) / name
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace").strip().splitlines()
            if text:
                return "\n".join(text[-lines:])
    return "(no log output)"


def poll_ready(
    info: ServerInfo,
    ready: Callable[[], bool],
    title: str,
    tail: Callable[[], str],
    timeout: float = 300.0,
    should_stop: Callable[[], bool] | None = None,
) -> float:
    """Poll ``ready()`` until it is true; returns the seconds waited. Either engine's wait.

    ``ready`` may raise to report a failure it can see; a server that exits, a timeout or
    ``should_stop`` (polled too, so a SIGTERM during a slow model load is honoured at once:
    SageMaker kills a container that ignores it for 30 s) end the wait with the last lines
    of the server's log (``tail``).
    """
    start = time.monotonic()
    while True:
        if should_stop is not None and should_stop():
            raise TwinnetError("stopped before the model was ready")
        if ready():
            return time.monotonic() - start
        if not info.alive():
            raise TwinnetError(f"{title} exited during start-up; last log lines:\n{tail()}")
        if time.monotonic() - start > timeout:
            raise TwinnetError(
                f"the model did not become ready within {timeout:.0f} s; see the logs in "
                f"{info.log_dir}. Last lines:\n{tail()}"
            )
        time.sleep(0.25)


def wait_ready(
    info: ServerInfo, timeout: float = 300.0, should_stop: Callable[[], bool] | None = None
) -> float:
    """Block until every TorchServe model is ready (:func:`model_ready`); the seconds waited.

    Readiness comes from the management API, not ``/ping``: TorchServe's ``/ping`` says
    "Healthy" before any worker has loaded the model.
    """

    def ready() -> bool:
        keyed = info.key_file.exists() or not info.auth
        return keyed and all(model_ready(info, m) for m in info.models)

    return poll_ready(info, ready, "TorchServe", lambda: log_tail(info), timeout, should_stop)
