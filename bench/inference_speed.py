"""How fast does twinnet compare images on this CPU, against the original sample's handler?

resnet50 at 224 px with seeded random weights (speed does not depend on the weights) and
real ~1024x768 JPEGs from ../shared/data/samples (generated photos of that size when the
folder is absent). Prints pairs/s for:

1. naive: the sample's handler: PIL open, ``Resize((224, 224))``, ``ToTensor``,
   ``Normalize``, the encoder twice at batch 1, the head; fp32, no cache;
2. the library's default ``Twin.compare`` on images it has not seen: with the int8 encoder
   that ``twinnet quantize`` adds (calibrated on 128 pet photos, checked on 400 pairs of the
   other 242) where the CPU has VNNI, in its default engine (OpenVINO when installed); then
   at bf16 (the float fast path) and fp32, and the int8 file in ONNX Runtime;
3. ``compare_batch`` with batches of 8 unseen pairs;
4. ``search`` of one query against 50 gallery images, unseen and then seen (cached).

It also measures this CPU's fp32 and bf16 matmul (and 3x3 convolution) rates and prints each
row's useful work (16.4 GFLOP per pair, 8.2 per encoded image) as a fraction of the rate its
precision could reach (int8 rows against the bf16 rate: the "bf16 floor"), where the time of
one pair goes (decode, resize, to tensor, encoder, head; each timed alone, one thread
unless the stage is the encoder), the int8 encoder's agreement with fp32, and how long
``Twin.load`` takes at each precision (a worker's cold start, less the server's own).

    .venv/bin/python bench/inference_speed.py [--rounds 15] [--threads N]
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


#: A timed row: a call, or ``(prepare, call)`` where ``prepare`` runs untimed before each
#: call (emptying a cache, so that every call sees unseen images).
Row = Callable[[], object] | tuple[Callable[[], object], Callable[[], object]]


def round_robin(fns: dict[str, Row], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds so that load
    from other processes on a shared machine falls on every row alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    _timed_rounds(fns, rounds, times)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _timed_rounds(fns: dict[str, Row], rounds: int, times: dict[str, list[float]]) -> None:
    """One untimed call of each (first-call allocations, oneDNN kernel creation), then
    ``rounds`` interleaved timed calls, appended to ``times``."""
    calls = {name: row if isinstance(row, tuple) else (None, row) for name, row in fns.items()}
    for prepare, fn in calls.values():
        if prepare:
            prepare()
        fn()
    for _ in range(rounds):
        for name, (prepare, fn) in calls.items():
            if prepare:
                prepare()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)


def grouped_rounds(
    groups: list[tuple[int, dict[str, Row]]], rounds: int, cycles: int = 3
) -> dict[str, float]:
    """:func:`round_robin` for rows that need different torch thread counts (an int8 Twin
    runs torch on one thread, the float paths on all): each group runs at its count, and the
    groups take turns ``cycles`` times, so drift on a shared machine falls on all of them.
    Switching on every call instead would rebuild oneDNN's kernels each time."""
    times: dict[str, list[float]] = {name: [] for _, fns in groups for name in fns}
    per_cycle = max(1, -(-rounds // cycles))
    for _ in range(cycles):
        for threads, fns in groups:
            torch.set_num_threads(threads)
            _timed_rounds(fns, per_cycle, times)
    return {name: statistics.median(ts) for name, ts in times.items()}


def timed(fn: Callable[[], object], seconds: float) -> float:
    """Minimum seconds per call over about ``seconds``."""
    fn()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def flop_rates(dtype: torch.dtype, seconds: float) -> tuple[float, float]:
    """GFLOP/s of a 2048^3 matrix product (``torch.mm``) and of a 3x3 convolution (oneDNN,
    256 channels at 28x28, batch 8): what dense kernels reach on this CPU for ``dtype``.

    Both are reported because on some CPUs the BLAS behind ``torch.mm`` is slower than the
    oneDNN kernels that run the encoder; the larger of the two is the limit used.
    """
    n = 2048
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    x = torch.randn(8, 256, 28, 28).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last)
    conv_flop = 2 * 8 * 256 * 256 * 9 * 28 * 28
    with torch.inference_mode():
        mm = 2 * n**3 / timed(lambda: torch.mm(a, b), seconds / 2) / 1e9
        conv = conv_flop / timed(lambda: torch.nn.functional.conv2d(x, w, padding=1), seconds / 2)
    return mm, conv / 1e9


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


def calibration_folder(tmp: Path) -> Path:
    """Pet photos by breed (the real ones when present): what ``twinnet quantize`` reads."""
    if PETS.is_dir():
        return PETS
    out = tmp / "calibration"
    for i, data in enumerate(photos(200, offset=100)):
        (out / f"class{i % 10}").mkdir(parents=True, exist_ok=True)
        (out / f"class{i % 10}" / f"{i}.jpg").write_bytes(data)
    return out


def load_seconds(model_dir: Path, precision: str, threads: int | None) -> float:
    """Median seconds of ``Twin.load`` plus a first comparison (kernels are built lazily)."""
    from twinnet.infer.twin import Twin

    img = jpeg_bytes(Image.new("RGB", (64, 48), "gray"))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        Twin.load(model_dir, device="cpu", precision=precision, threads=threads).compare(img, img)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def twin_stages(twin: object, left: bytes, right: bytes) -> dict[str, Callable[[], object]]:
    """One pair through the library's steps, each timed alone."""
    from twinnet.core.imaging import decode_image

    pre = twin.preprocess  # type: ignore[attr-defined]
    imgs = [decode_image(b, "x") for b in (left, right)]
    small = [pre.pixels(i) for i in imgs]
    batch = pre.batch(small)
    feats = twin._encode(batch)  # type: ignore[attr-defined]
    half = feats.shape[0] // 2
    if twin.has_embeddings:  # type: ignore[attr-defined]
        feats = twin._embed_features(feats)  # type: ignore[attr-defined]
    return {
        "decode": lambda: [decode_image(b, "x") for b in (left, right)],
        "resize": lambda: [pre.pixels(i) for i in imgs],
        "to tensor": lambda: pre.batch(small),
        "encoder": lambda: twin._encode(batch),  # type: ignore[attr-defined]
        "head": lambda: twin._head(feats[:half], feats[half:]),  # type: ignore[attr-defined]
    }


def naive_stages(naive: NaiveHandler, left: bytes, right: bytes) -> dict[str, Callable[[], object]]:
    from torchvision import transforms

    resize, rest = naive.tfm.transforms[0], transforms.Compose(naive.tfm.transforms[1:])
    imgs = [Image.open(io.BytesIO(b)).convert("RGB") for b in (left, right)]
    small = [resize(i) for i in imgs]
    xs = [rest(i)[None] for i in small]

    def encode() -> object:
        with torch.no_grad():
            return [naive.encoder(x) for x in xs]

    feats = encode()

    def head() -> object:
        with torch.no_grad():
            return naive.head(torch.cat(feats, dim=1))  # type: ignore[arg-type]

    return {
        "decode": lambda: [Image.open(io.BytesIO(b)).convert("RGB") for b in (left, right)],
        "resize": lambda: [resize(i) for i in imgs],
        "to tensor": lambda: [rest(i)[None] for i in small],
        "encoder": encode,
        "head": head,
    }


def other_engine(model_dir: Path, twin: object, threads: int | None) -> object | None:
    """The same model with its int8 file in ONNX Runtime, when the default runs another engine."""
    from twinnet.infer.int8 import installed_engines
    from twinnet.infer.twin import Twin

    engine = getattr(getattr(twin, "int8", None), "engine", None)
    if engine in (None, "onnxruntime") or "onnxruntime" not in installed_engines():
        return None
    return Twin.load(model_dir, device="cpu", threads=threads, int8_engine="onnxruntime")


def torch_threads(twin: object) -> int:
    """The torch threads a Twin's load left: one for an int8 runtime, else its own count."""
    runtime = twin.runtime  # type: ignore[attr-defined]
    return 1 if runtime.int8 else runtime.threads


def measure_stages(
    paths: dict[str, tuple[int, Callable[[], dict[str, Callable[[], object]]]]], rounds: int
) -> dict[str, dict[str, float]]:
    """Seconds per stage of one pair, per path; each path's stages are built and timed at
    its torch thread count."""
    out = {}
    for name, (threads, build) in paths.items():
        torch.set_num_threads(threads)
        out[name] = round_robin(build(), rounds)
    return out


def print_stages(stages: dict[str, dict[str, float]]) -> None:
    """Where one pair's time goes, per path: ms per stage and its share."""
    print("Per pair, each stage timed alone (decode and resize run in parallel threads in")
    print("Twin.compare, so its wall time is less than their sum):")
    print()
    print("| path | decode | resize | to tensor | encoder | head | sum |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, t in stages.items():
        total = sum(t.values())
        cells = " | ".join(f"{v * 1000:.1f} ({v / total:.0%})" for v in t.values())
        print(f"| {name} | {cells} | {total * 1000:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed calls of each row")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    args = parser.parse_args(argv)

    from twinnet.core.artifacts import save_model_dir
    from twinnet.core.model import build_model
    from twinnet.core.spec import ModelSpec
    from twinnet.infer.quantize import quantize_model
    from twinnet.infer.runtime import cpu_has_int8_dot, cpu_has_native_bf16, default_threads
    from twinnet.infer.twin import Twin

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet50", image_size=224)
    model = build_model(spec).eval()
    tmp = tempfile.TemporaryDirectory()
    model_dir = save_model_dir(model, spec, Path(tmp.name) / "model")
    record = quantize_model(model_dir, calibration_folder(Path(tmp.name)))
    loads = {p: load_seconds(model_dir, p, args.threads) for p in ("auto", "bf16", "fp32")}
    twin = Twin.load(model_dir, device="cpu", threads=args.threads)
    twin16 = Twin.load(model_dir, device="cpu", precision="bf16", threads=args.threads)
    twin32 = Twin.load(model_dir, device="cpu", precision="fp32", threads=args.threads)
    drafty = Twin.load(model_dir, device="cpu", draft=True, threads=args.threads)
    other = other_engine(model_dir, twin, args.threads)  # the int8 file in ONNX Runtime
    naive = NaiveHandler(model)

    pairs_imgs = photos(8)
    gallery = photos(GALLERY, offset=8)
    batch_imgs = gallery[:16]

    torch.set_num_threads(args.threads or default_threads())  # the CPU's rates: all threads
    mm32, conv32 = flop_rates(torch.float32, 2.0)
    mm16, conv16 = flop_rates(torch.bfloat16, 2.0)
    peak32, peak16 = max(mm32, conv32), max(mm16, conv16)
    peak_default = peak32 if twin.precision == "fp32" else peak16  # int8: the bf16 floor

    cycle = {"i": 0}

    def next_pair() -> tuple[bytes, bytes]:
        i = cycle["i"] = (cycle["i"] + 1) % 4
        return pairs_imgs[2 * i], pairs_imgs[2 * i + 1]

    def run_naive() -> None:
        naive(*next_pair())

    def unseen(t: Twin, call: Callable[[Twin], object]) -> Row:
        """A row on images the Twin has not seen: its cache is emptied, untimed, first."""
        return (t.cache.clear, lambda: call(t))

    batch_pairs = [(batch_imgs[2 * k], batch_imgs[2 * k + 1]) for k in range(8)]
    n = args.threads or default_threads()
    rows: dict[str, tuple[int, Row]] = {
        "naive": (n, run_naive),
        "default": (torch_threads(twin), unseen(twin, lambda t: t.compare(*next_pair()))),
        "fp32": (torch_threads(twin32), unseen(twin32, lambda t: t.compare(*next_pair()))),
        "bf16": (torch_threads(twin16), unseen(twin16, lambda t: t.compare(*next_pair()))),
        "draft": (torch_threads(drafty), unseen(drafty, lambda t: t.compare(*next_pair()))),
        **(
            {"other": (torch_threads(other), unseen(other, lambda t: t.compare(*next_pair())))}
            if other is not None
            else {}
        ),
        "batch": (torch_threads(twin), unseen(twin, lambda t: t.compare_batch(batch_pairs))),
        "unseen": (
            torch_threads(twin),
            unseen(twin, lambda t: t.search(pairs_imgs[0], gallery, top_k=5)),
        ),
        "seen": (torch_threads(twin), lambda: twin.search(pairs_imgs[0], gallery, top_k=5)),
    }
    groups: dict[int, dict[str, Row]] = {}
    for name, (threads, fn) in rows.items():
        groups.setdefault(threads, {})[name] = fn
    stages = measure_stages(
        {"naive (fp32)": (n, lambda: naive_stages(naive, *pairs_imgs[:2])),
         f"default ({twin.precision})": (torch_threads(twin), lambda: twin_stages(twin, *pairs_imgs[:2])),
         **({f"int8 ({other.int8.engine})": (torch_threads(other), lambda: twin_stages(other, *pairs_imgs[:2]))}
            if other is not None else {}),
         "bf16": (torch_threads(twin16), lambda: twin_stages(twin16, *pairs_imgs[:2]))},
        args.rounds,
    )  # fmt: skip
    t = grouped_rounds(list(groups.items()), args.rounds)
    p = twin.precision
    rows = [  # name, s/call, pairs/call, GFLOP of encoder work per call, peak
        ("1. naive: sample handler, fp32, batch 1", t["naive"], 1, GFLOP_PAIR, peak32),
        (f"2. Twin.compare, default ({p})", t["default"], 1, GFLOP_PAIR, peak_default),
        ("2a. Twin.compare, precision=fp32", t["fp32"], 1, GFLOP_PAIR, peak32),
        ("2c. Twin.compare, precision=bf16", t["bf16"], 1, GFLOP_PAIR, peak16),
        (f"2b. Twin.compare, {p} + draft=True", t["draft"], 1, GFLOP_PAIR, peak_default),
        *(
            [(f"2d. Twin.compare, int8 in {other.int8.engine}", t["other"], 1, GFLOP_PAIR, peak16)]
            if other is not None
            else []
        ),
        ("3. compare_batch, 8 pairs", t["batch"], 8, 8 * GFLOP_PAIR, peak_default),
        (
            f"4a. search 1 vs {GALLERY}, unseen",
            t["unseen"],
            GALLERY,
            (GALLERY + 1) * GFLOP_IMAGE,
            peak_default,
        ),
        (f"4b. search 1 vs {GALLERY}, cached", t["seen"], GALLERY, 0.0, peak_default),
    ]

    print(
        f"CPU: {torch.get_num_threads()} torch threads; native bf16: {cpu_has_native_bf16()}; "
        f"int8 dot products (VNNI/AMX): {cpu_has_int8_dot()}"
    )
    print(f"matmul (torch.mm 2048^3): fp32 {mm32:.0f} GFLOP/s, bf16 {mm16:.0f} GFLOP/s")
    print(f"3x3 conv (oneDNN):        fp32 {conv32:.0f} GFLOP/s, bf16 {conv16:.0f} GFLOP/s")
    print(f"FLOP limit used (the larger): fp32 {peak32:.0f}, bf16 {peak16:.0f} GFLOP/s")
    print(f"model: resnet50 @ 224 px; photos ~1024x768 JPEG; {twin!r}")
    print("int8 engines: " + ", ".join(f"{k} {v['version']}" for k, v in record["engines"].items()))
    print()
    print("| path | ms/call | pairs/s | x naive | fraction of FLOP limit |")
    print("|---|---:|---:|---:|---:|")
    naive_rate = 1 / t["naive"]
    for name, sec, n, work, peak in rows:
        rate = n / sec
        frac = f"{work / sec / peak:.2f}" if work else "- (no encoder run)"
        print(f"| {name} | {sec * 1000:.1f} | {rate:.1f} | {rate / naive_rate:.2f} | {frac} |")
    print()
    print_stages(stages)
    print()
    for engine, measured in record["engines"].items():
        a = measured["agreement"]
        print(
            f"int8 encoder ({engine}) vs fp32 on {a['pairs']} held-out pairs "
            f"({a['held_out_images']} images, calibrated on {record['calibration_images']}): "
            f"{a['pairs'] - a['changed_decisions']}/{a['pairs']} decisions the same "
            f"({a['agreement']:.2%}), |dp| max {a['max_abs_probability_difference']:.3f}, "
            f"mean {a['mean_abs_probability_difference']:.4f}"
        )
    print(
        "Twin.load, median of 3 (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in loads.items())
        + f"; {loads['auto'] / loads['bf16']:.2f}x bf16's"
    )
    print()
    print(f"default vs naive: {t['naive'] / t['default']:.2f}x (target >= 4.5x)")
    print(f"default vs bf16 (the float fast path): {t['bf16'] / t['default']:.2f}x")
    ratio = t["seen"] / t["default"]
    print(f"cached {GALLERY}-image search / single compare: {ratio:.2f} (target < 3)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
