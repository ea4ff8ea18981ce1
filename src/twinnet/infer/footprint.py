"""How much memory one model server worker needs, measured rather than guessed.

:func:`measure` starts a fresh Python process that loads the model as a worker does
(:meth:`Twin.load <twinnet.infer.twin.Twin.load>` at the precision the server would pick),
answers one comparison with Grad-CAM maps (the float encoder's activations and gradients
on top of the verdict's) and reports its peak resident memory. A fresh process, because
the caller's own memory (torch already imported, other models loaded) would blur the
figure. ``twinnet deploy --mode serverless`` checks it against the endpoint's memory.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from twinnet.errors import TwinnetError

__all__ = ["Footprint", "measure"]


@dataclass(frozen=True)
class Footprint:
    """One worker's peak resident memory after loading the model and answering once."""

    peak_mb: float
    precision: str


def measure(
    model_dir: str | os.PathLike, precision: str = "auto", timeout_s: float = 600.0
) -> Footprint:
    """Peak resident memory (MB) of a fresh process that loads ``model_dir`` and compares once."""
    cmd = [sys.executable, "-m", "twinnet.infer.footprint", str(model_dir), precision]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise TwinnetError(
            f"measuring the memory of {model_dir} took over {timeout_s:.0f} s"
        ) from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TwinnetError(f"could not load {model_dir} to measure its memory: {why}")
    answer = json.loads(lines[-1])
    return Footprint(float(answer["peak_mb"]), str(answer["precision"]))


def _png(width: int, height: int, seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("precision", nargs="?", default="auto")
    args = parser.parse_args(argv)

    from twinnet.infer.twin import Twin

    twin = Twin.load(Path(args.model_dir), device="cpu", precision=args.precision)
    size = int(twin.spec.image_size)
    twin.compare(_png(2 * size, 2 * size, 0), _png(2 * size, 2 * size, 1), cam=True)
    print(json.dumps({"peak_mb": _peak_kb() / 1024, "precision": twin.precision}))
    return 0


def _peak_kb() -> int:
    """This process's peak resident memory in KB.

    Linux's ``VmHWM`` belongs to the process's own address space. ``ru_maxrss`` does not
    do: it keeps the peak of the address space before ``exec``, which after ``fork`` is the
    parent's, so a process started by a big parent would report the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS


if __name__ == "__main__":
    raise SystemExit(_main())
