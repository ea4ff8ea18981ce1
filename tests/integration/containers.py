"""The serving container run as its image's ENTRYPOINT would run it, without Docker.

Shared by the container tests and the SageMaker round trips: a model directory packaged and
unpacked as SageMaker leaves ``/opt/ml/model``, and ``twinnet container serve`` as a
subprocess watched from its first instant until ``/ping`` answers 200.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import requests
from motoserver import free_port
from PIL import Image

from twinnet.container.package import package

START_TIMEOUT = 240.0


def png(seed: int, size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def unpacked(model_dir: Path, work: Path, **options) -> Path:
    """``/opt/ml/model`` as SageMaker leaves it: ``model.tar.gz`` unpacked."""
    tarball = package(model_dir, work / "model.tar.gz", batch_size=4, max_batch_delay=20, **options)
    unpacked = work / "opt" / "ml" / "model"
    unpacked.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked, filter="data")
    return unpacked


def run_container(
    model_dir: Path, log: Path, *args: str, prefix: Sequence[str] = (), **env_settings: str
):
    """The entrypoint as a subprocess (``args`` appended, ``prefix`` before it: a sandbox),
    watched from its first instant until ``/ping`` is 200; yields what a test needs, then
    stops it with SIGTERM if it still runs."""
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "TWINNET_HOST": "127.0.0.1",
           **env_settings}  # fmt: skip
    out = log.open("wb")
    cmd = [*prefix, sys.executable, "-m", "twinnet", "container", "serve"]
    cmd += ["--model-dir", str(model_dir)]
    cmd += args
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    history: list[tuple[float, object]] = []
    ready_logged_at_200 = False
    start = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"container exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() - start > START_TIMEOUT:
                pytest.fail(
                    f"/ping not 200 within {START_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}"
                )
            try:
                status: object = requests.get(f"{url}/ping", timeout=5).status_code
            except requests.ConnectionError:
                status = "refused"
            if not history or history[-1][1] != status:
                history.append((time.monotonic() - start, status))
            if status == 200:
                ready_logged_at_200 = "ready: /ping and /invocations" in log.read_text()
                break
            time.sleep(0.05)
        yield {
            "proc": proc,
            "url": url,
            "log": log,
            "history": history,
            "ready_logged_at_200": ready_logged_at_200,
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        out.close()
