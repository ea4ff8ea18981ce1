"""How fast does twinnet compare images on this CPU, against the original sample's handler?

resnet50 at 224 px with seeded random weights (speed does not depend on the weights) and
real ~1024x768 JPEGs from ../shared/data/samples (generated photos of that size when the
folder is absent). Prints pairs/s for:

1. naive: the sample's handler: PIL open, ``Resize((224, 224))``, ``ToTensor``,
   ``Normalize``, the encoder twice at batch 1, the head; fp32, no cache;
2. the library's default ``Twin.compare`` on images it has not seen;
3. ``compare_batch`` with batches of 8 unseen pairs;
4. ``search`` of one query against 50 gallery images, unseen and then seen (cached).

It also measures this CPU's fp32 and bf16 matmul rates and prints each row's useful work
(16.4 GFLOP per pair, 8.2 per encoded image) as a fraction of the rate it could reach.

    .venv/bin/python bench/inference_speed.py [--seconds 6] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "samples"
PETS = ROOT.parent / "shared" / "data" / "oxford-pets-sample"
GFLOP_IMAGE = 8.2
GFLOP_PAIR = 2 * GFLOP_IMAGE
GALLERY = 50


def timed(fn: Callable[[], object], seconds: float, min_runs: int = 3, warmup: int = 1) -> float:
    """Median seconds per call, over at least ``min_runs`` calls and about ``seconds`` total."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype, seconds: float) -> float:
    """Sustained square-matmul rate, the practical FLOP limit of this CPU for ``dtype``."""
    n = 2048
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    per_call = timed(lambda: torch.mm(a, b), seconds, warmup=2)
    return 2 * n**3 / per_call / 1e9


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def photos(count: int, offset: int = 0) -> list[bytes]:
    """``count`` distinct ~1024x768 JPEGs: the real samples first, then real pet photos
    enlarged to that size, or smooth generated images when no real data is present."""
    out = [p.read_bytes() for p in sorted(SAMPLES.glob("*.jpg"))] if SAMPLES.is_dir() else []
    pets = sorted(PETS.rglob("*.jpg")) if PETS.is_dir() else []
    rng = np.random.default_rng(0)
    i = 0
    while len(out) < count + offset:
        if pets:
            img = Image.open(pets[(i * 7) % len(pets)]).convert("RGB").resize((1024, 768))
        else:
            low = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((1024, 768), Image.BICUBIC)
        out.append(jpeg_bytes(img))
        i += 1
    return out[offset : offset + count]


class NaiveHandler:
    """The original sample's inference path, kept as the baseline."""

    def __init__(self, model: torch.nn.Module) -> None:
        from torchvision import transforms

        self.encoder, self.head = model.encoder, model.head
        self.tfm = transforms.Compose(
            [
                transforms.Resize((224, 224)),
                transforms.ToTensor(),
                transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ]
        )

    def __call__(self, left: bytes, right: bytes) -> torch.Tensor:
        lt = self.tfm(Image.open(io.BytesIO(left)).convert("RGB"))[None, ...]
        rt = self.tfm(Image.open(io.BytesIO(right)).convert("RGB"))[None, ...]
        with torch.no_grad():
            return self.head(torch.cat([self.encoder(lt), self.encoder(rt)], dim=1))[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="time per row (median taken)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    args = parser.parse_args(argv)

    from twinnet.artifacts import save_model_dir
    from twinnet.inference import Twin
    from twinnet.model import build_model
    from twinnet.runtime import cpu_has_native_bf16
    from twinnet.spec import ModelSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet50", image_size=224)
    model = build_model(spec).eval()
    tmp = tempfile.TemporaryDirectory()
    model_dir = save_model_dir(model, spec, Path(tmp.name) / "model")
    twin = Twin.load(model_dir, device="cpu", threads=args.threads)
    naive = NaiveHandler(model)

    pairs_imgs = photos(8)
    gallery = photos(GALLERY, offset=8)
    batch_imgs = gallery[:16]
    secs = args.seconds

    peak32 = matmul_gflops(torch.float32, 2.0)
    peak16 = matmul_gflops(torch.bfloat16, 2.0)
    peak_default = peak16 if twin.precision == "bf16" else peak32

    cycle = {"i": 0}

    def next_pair() -> tuple[bytes, bytes]:
        i = cycle["i"] = (cycle["i"] + 1) % 4
        return pairs_imgs[2 * i], pairs_imgs[2 * i + 1]

    def run_naive() -> None:
        naive(*next_pair())

    def run_default() -> None:
        twin.cache.clear()  # unseen images: no help from the cache
        twin.compare(*next_pair())

    def run_batch() -> None:
        twin.cache.clear()
        twin.compare_batch([(batch_imgs[2 * k], batch_imgs[2 * k + 1]) for k in range(8)])

    def run_search_unseen() -> None:
        twin.cache.clear()
        twin.search(pairs_imgs[0], gallery, top_k=5)

    def run_search_seen() -> None:
        twin.search(pairs_imgs[0], gallery, top_k=5)

    rows: list[tuple[str, float, float, float]] = []  # name, s/call, pairs/call, work GFLOP
    t_naive = timed(run_naive, secs)
    rows.append(("1. naive (sample handler, fp32, batch 1)", t_naive, 1, GFLOP_PAIR))
    t_default = timed(run_default, secs)
    rows.append((f"2. Twin.compare default ({twin.precision})", t_default, 1, GFLOP_PAIR))
    t_batch = timed(run_batch, secs)
    rows.append(("3. compare_batch, 8 pairs", t_batch, 8, 8 * GFLOP_PAIR))
    t_unseen = timed(run_search_unseen, secs, min_runs=2)
    rows.append((f"4a. search 1 vs {GALLERY}, unseen", t_unseen, GALLERY, (GALLERY + 1) * GFLOP_IMAGE))
    run_search_seen()
    t_seen = timed(run_search_seen, secs)
    rows.append((f"4b. search 1 vs {GALLERY}, cached", t_seen, GALLERY, 0.0))

    print(f"CPU: {torch.get_num_threads()} torch threads; native bf16: {cpu_has_native_bf16()}")
    print(f"matmul limit: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    print(f"model: resnet50 @ 224 px; photos ~1024x768 JPEG; {twin!r}")
    print()
    print("| path | ms/call | pairs/s | x naive | fraction of FLOP limit |")
    print("|---|---:|---:|---:|---:|")
    naive_rate = 1 / t_naive
    for i, (name, t, n, work) in enumerate(rows):
        rate = n / t
        peak = peak32 if i == 0 else peak_default
        frac = f"{work / t / peak:.2f}" if work else "- (encoder skipped)"
        print(f"| {name} | {t * 1000:.1f} | {rate:.1f} | {rate / naive_rate:.2f} | {frac} |")
    print()
    print(f"default vs naive: {t_naive / t_default:.2f}x (target >= 1.8x)")
    print(f"cached {GALLERY}-image search / single compare: {t_seen / t_default:.2f} (target < 3)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
