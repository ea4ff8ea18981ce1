"""The container as SageMaker Serverless Inference runs it: read-only but for ``/tmp``.

Without Docker, the entrypoint runs in a sandbox made with a user namespace: the whole
filesystem is bind-mounted read-only, ``/tmp`` alone stays writable, the model directory is
read-only, and HOME and the working directory are unwritable. Where a memory cgroup can be
made, the container runs capped at the endpoint's memory and its peak is compared with what
``twinnet deploy --mode serverless`` estimates. It gets the settings deploy gives a
serverless endpoint (one worker, the 4 MB request limit).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from containers import png, run_container, unpacked

from twinnet.aws.fit import FRONTEND_MB
from twinnet.aws.modes import SERVERLESS, SERVERLESS_REQUEST_BYTES, mode_environment
from twinnet.contract.encode import encode_multipart
from twinnet.infer.footprint import measure

pytestmark = pytest.mark.integration

MEMORY_MB = 2048  # the default --memory-mb

#: Run "$@" with / read-only, /tmp writable and $2 (the model) read-only, from "/".
SANDBOX = """#!/bin/sh
R=$1; M=$2; shift 2
mount --rbind / "$R" || exit 90
mount -o remount,bind,ro "$R" || exit 91
mount --bind /tmp "$R/tmp" || exit 92
mount --bind "$M" "$R$M" && mount -o remount,bind,ro "$R$M" || exit 93
exec chroot "$R" /bin/sh -c 'cd / && exec "$@"' sh "$@"
"""


def _sandbox(tmp: Path, model: Path) -> list[str]:
    """The command prefix that runs the rest read-only but for /tmp; skips where it cannot."""
    if shutil.which("unshare") is None or shutil.which("chroot") is None:
        pytest.skip("needs unshare and chroot (util-linux, coreutils)")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"user namespaces are not allowed here: {probe.stderr.decode().strip()}")
    if not str(model).startswith("/tmp/"):
        pytest.skip("the sandbox keeps /tmp writable: the model must live under it")
    script, root = tmp / "sandbox.sh", tmp / "root"
    script.write_text(SANDBOX)
    script.chmod(0o755)
    root.mkdir()
    return ["unshare", "-rm", "--propagation", "private", str(script), str(root), str(model)]


class _Cgroup:
    """A memory cgroup (v1 or v2) capped at ``limit`` bytes, for one process tree."""

    def __init__(self, path: Path, v2: bool, limit: int) -> None:
        self.path, self.v2 = path, v2
        (path / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(limit))

    @property
    def enter(self) -> list[str]:
        """A command prefix that moves the command into the group before it starts."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.path)]

    def peak_mb(self) -> float:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text()) / 2**20


@contextlib.contextmanager
def _memory_cgroup(limit: int) -> Iterator[_Cgroup | None]:
    """A fresh memory cgroup, or ``None`` where this machine lets none be made."""
    v2_root, v1_root = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")
    name = f"twinnet-test-{os.getpid()}"
    if (v2_root / "cgroup.controllers").is_file():
        path, v2 = v2_root / name, True
    elif v1_root.is_dir():
        path, v2 = v1_root / name, False
    else:
        yield None
        return
    try:
        path.mkdir()
    except OSError:
        yield None
        return
    try:
        yield _Cgroup(path, v2, limit)
    finally:
        with contextlib.suppress(OSError):
            path.rmdir()


def test_serverless_container_starts_read_only_in_its_memory(random_model_dir, tmp_path):
    model = unpacked(random_model_dir, tmp_path / "work")
    before = {p.name: p.stat().st_mtime_ns for p in model.iterdir()}
    sandbox = _sandbox(tmp_path, model)
    settings = mode_environment(SERVERLESS, {})
    assert settings == {"TWINNET_MAX_REQUEST_BYTES": str(4 * 2**20), "TWINNET_WORKERS": "1"}
    log = tmp_path / "container.log"
    with _memory_cgroup(MEMORY_MB * 2**20) as cgroup:
        prefix = (cgroup.enter if cgroup else []) + sandbox
        running = run_container(model, log, prefix=prefix, HOME="/root", **settings)
        with contextlib.closing(running):
            container = next(running)
            url = f"{container['url']}/invocations"
            text = log.read_text()
            assert "HOME /root is not writable; the model server uses /tmp/" in text

            body, ctype = encode_multipart(png(1, (64, 48)), png(2, (50, 50)), cam=True)
            r = requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=60)
            assert r.status_code == 200, r.text
            assert set(r.json()) == {"same", "probability", "logits", "threshold", "model", "cam"}

            # Serverless takes 4 MB: a bigger body is refused alone, with the contract's error.
            big = b"x" * (SERVERLESS_REQUEST_BYTES + 1)
            r = requests.post(url, data=big, headers={"Content-Type": "image/png"}, timeout=60)
            assert r.status_code == 413
            error = json.loads(r.content)["error"]
            assert error["code"] == "payload_too_large" and "4 MiB limit" in error["message"]
            r = requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=60)
            assert r.status_code == 200, r.text
            peak = cgroup.peak_mb() if cgroup else None
        assert container["proc"].returncode == 0, log.read_text()[-2000:]

    # Nothing was written into the model directory (it was mounted read-only throughout).
    assert {p.name: p.stat().st_mtime_ns for p in model.iterdir()} == before
    if peak is None:  # the read-only start is checked; the cap needs a cgroup
        print("no memory cgroup could be made here: the container ran uncapped")
        return
    # What deploy --mode serverless estimates covers what the container used at its peak.
    estimate = FRONTEND_MB + measure(random_model_dir).peak_mb
    print(
        f"container peak {peak:.0f} MB in a {MEMORY_MB} MB cgroup; deploy estimates {estimate:.0f} MB"
    )
    assert peak <= estimate <= MEMORY_MB
