"""Make the int8 encoder of a model directory, and refuse it when it changes decisions.

``quantize_model`` splits the user's images in two. The first part calibrates: ONNX Runtime's
static quantisation runs the float encoder on them to fix each activation's int8 range
(QDQ format, uint8 activations, int8 weights per output channel: the kernels that VNNI and
AMX run). The rest are held out: pairs of them (balanced same/different pairs when the
folder has class subfolders) go through the fp32 model and through the int8 one in every
installed engine (OpenVINO, ONNX Runtime: they round differently), and the int8 encoder is
installed only when no engine changes more than :data:`MAX_DISAGREEMENT` of the decisions.
The figures go into ``twinnet.json``, per engine, beside the file's digest and the float
weights' digest.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinnet.core.artifacts import ENCODER_FILE, load_model_dir
from twinnet.core.imaging import build_transforms, decode_image
from twinnet.data.items import draw_pairs, list_images
from twinnet.errors import ImageError, TwinnetError
from twinnet.infer.int8 import (
    INPUT,
    INT8_FILE,
    OUTPUT,
    Int8Encoder,
    engine_version,
    file_sha256,
    installed_engines,
)
from twinnet.infer.onnx_export import export_graph
from twinnet.infer.runtime import resolve_runtime
from twinnet.infer.twin import Twin

__all__ = ["quantize_model", "MAX_DISAGREEMENT", "METHOD"]

#: The largest share of held-out decisions that the int8 encoder may change against fp32.
MAX_DISAGREEMENT = 0.01
METHOD = (
    "onnxruntime static quantization, QDQ: uint8 activations (MinMax calibration), "
    "int8 weights per channel"
)
#: Held-out images needed at the least, so that the agreement figure means something.
MIN_HELD_OUT = 20
_CALIBRATION_BATCH = 8
_PAIR_CHUNK = 64


def _split(images: str | os.PathLike, calibration: int, seed: int) -> tuple[list[Path], list[Path]]:
    files = list_images(images)
    if not files:
        raise TwinnetError(f"{os.fspath(images)} holds no images to calibrate on")
    files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    n_cal = min(calibration, len(files) // 2)
    if len(files) - n_cal < MIN_HELD_OUT or n_cal < 1:
        raise TwinnetError(
            f"{os.fspath(images)} has {len(files)} images; quantizing needs calibration "
            f"images and at least {MIN_HELD_OUT} more to check the int8 encoder on"
        )
    return files[:n_cal], files[n_cal:]


def _pairs(held_out: list[Path], root: Path, n: int, seed: int) -> tuple[np.ndarray, bool]:
    """``(n, 2)`` index pairs into ``held_out``: balanced by class when subfolders name
    classes (at least two, one with two images), otherwise drawn at random."""
    rng = np.random.default_rng(seed + 1)
    names = [p.parent.relative_to(root).as_posix() for p in held_out]
    lookup = {c: i for i, c in enumerate(sorted(set(names)))}
    classes = list(lookup)
    labels = np.array([lookup[c] for c in names], np.int64)
    if len(classes) >= 2 and np.bincount(labels).max() >= 2 and "." not in classes:
        return draw_pairs(labels, n, rng)[:, :2], True
    left = rng.integers(0, len(held_out), n)
    right = (left + rng.integers(1, len(held_out), n)) % len(held_out)  # never itself
    return np.stack([left, right], axis=1), False


class _Reader:
    """A calibration data reader for ONNX Runtime: batches of the images, preprocessed as
    the int8 path will see them (its fast resize, not fp32's Pillow one)."""

    def __init__(self, twin: Twin, files: list[Path]) -> None:
        self.pre = build_transforms(twin.spec, fast_resize=True)
        self.files = files
        self.skipped: dict[Path, str] = {}
        self.batches: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        pre = self.pre
        for start in range(0, len(self.files), _CALIBRATION_BATCH):
            imgs = []
            for path in self.files[start : start + _CALIBRATION_BATCH]:
                try:
                    imgs.append(pre.pixels(decode_image(path, f"calibration image {path}")))
                except ImageError as exc:  # skipped and said, as training does
                    self.skipped[path] = str(exc)
            if imgs:
                yield {INPUT: pre.batch(imgs).numpy()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)

    def rewind(self) -> None:
        self.batches = self._batches()


def _probabilities(twin: Twin, files: list[Path], pairs: np.ndarray) -> np.ndarray:
    """p(same) of each pair; NaN where an image of it could not be read."""
    out = []
    for start in range(0, len(pairs), _PAIR_CHUNK):
        chunk = [(files[a], files[b]) for a, b in pairs[start : start + _PAIR_CHUNK]]
        answers = twin.compare_batch(chunk, return_exceptions=True)
        out.extend(np.nan if isinstance(r, ImageError) else r.probability for r in answers)
    return np.array(out, np.float64)


def _quantize_graph(twin: Twin, files: list[Path], out: Path, tmp: Path) -> dict[Path, str]:
    """Write the int8 graph to ``out``; return the calibration images that could not be read."""
    try:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise TwinnetError(
            f"quantizing needs onnxruntime and onnx ({exc}): pip install 'twinnet[onnx]'"
        ) from None
    s = twin.spec.image_size
    export_graph(twin.model.encoder.float().eval(), (torch.zeros(2, 3, s, s),),
                 tmp / "encoder.onnx", [INPUT], OUTPUT)  # fmt: skip
    quant_pre_process(str(tmp / "encoder.onnx"), str(tmp / "encoder.pre.onnx"))
    reader = _Reader(twin, files)  # duck-typed: ORT only calls get_next()
    quantize_static(
        str(tmp / "encoder.pre.onnx"), str(out), reader,
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, per_channel=True,
    )  # fmt: skip
    return reader.skipped


def quantize_model(
    model_dir: str | os.PathLike,
    images: str | os.PathLike,
    calibration: int = 128,
    pairs: int = 400,
    seed: int = 0,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Write ``encoder.int8.onnx`` into ``model_dir`` and record it in ``twinnet.json``.

    Args:
        model_dir: a twinnet model directory.
        images: a folder of images like those the model will see; class subfolders, when
            present, give balanced held-out pairs.
        calibration: images used to calibrate (at most half of the folder); the rest are
            held out.
        pairs: held-out pairs on which int8 and fp32 decisions are compared.
        seed: seeds the split and the pairs.
        say: receives a line per stage, for progress.

    Returns:
        The ``quantization`` record now in the spec.

    Raises:
        TwinnetError: too few images, a missing library, or an int8 encoder that changes
            more than :data:`MAX_DISAGREEMENT` of the held-out decisions (then nothing is
            written, and the figure is in the message).
    """
    root = Path(model_dir)
    model, spec = load_model_dir(root)
    if pairs < 1:
        raise TwinnetError(f"--pairs must be at least 1, got {pairs}")
    calib, held_out = _split(images, calibration, seed)
    index, labelled = _pairs(held_out, Path(images), pairs, seed)
    threads = torch.get_num_threads()  # the int8 runtime below sets torch's to 1
    fp32 = Twin(model, spec, resolve_runtime("cpu", "fp32"), cache_mb=4096)
    partial = root / f".{INT8_FILE}.partial"
    try:
        with tempfile.TemporaryDirectory(prefix="twinnet-quantize-") as tmp:
            say(f"calibrating on {len(calib)} images ...")
            skipped = _quantize_graph(fp32, calib, partial, Path(tmp))
        for path, why in skipped.items():
            say(f"skipped {path}: {why}")
        engines = installed_engines()
        say(
            f"comparing with fp32 on {len(index)} pairs of {len(held_out)} held-out images "
            f"({', '.join(engines)}) ..."
        )
        p32 = _probabilities(fp32, held_out, index)
        readable = ~np.isnan(p32)
        if readable.sum() < len(index):
            say(f"left out {len(index) - readable.sum()} pairs with an unreadable image")
        if not readable.any():
            raise TwinnetError(f"no held-out pair of {os.fspath(images)} could be read")
        runtime = resolve_runtime("cpu", "int8", int8_unavailable=None)
        measured: dict[str, dict[str, Any]] = {}
        for engine in engines:  # each engine rounds its own way: each is checked
            int8 = Twin(model, spec, runtime, cache_mb=4096,
                        int8=Int8Encoder(partial, runtime.threads, engine).wait())  # fmt: skip
            p8 = _probabilities(int8, held_out, index)[readable]
            agreement = _agreement(p32[readable], p8, spec.threshold)
            agreement.update(held_out_images=len(held_out), balanced_by_class=labelled)
            changed, pairs_checked = agreement["changed_decisions"], agreement["pairs"]
            if changed > MAX_DISAGREEMENT * pairs_checked:
                raise TwinnetError(
                    f"the int8 encoder changes {changed} of {pairs_checked} decisions "
                    f"({changed / pairs_checked:.1%}) against fp32 on held-out pairs in "
                    f"{engine}, more than the {MAX_DISAGREEMENT:.0%} allowed, so it was not "
                    "installed. Calibrate on more images like those the model will serve, "
                    "or serve it at bf16 or fp32."
                )
            measured[engine] = {"version": engine_version(engine), "agreement": agreement}
        worst = max(
            measured.values(),
            key=lambda m: (m["agreement"]["changed_decisions"],
                           m["agreement"]["max_abs_probability_difference"]),
        )  # fmt: skip
        record = {
            "file": INT8_FILE,
            "sha256": file_sha256(partial),
            "weights_sha256": file_sha256(root / ENCODER_FILE),
            "method": METHOD,
            "calibration_images": len(calib) - len(skipped),
            "agreement": worst["agreement"],  # the least agreeing engine's
            "engines": measured,
            "onnxruntime": engine_version("onnxruntime"),  # the quantizer's
        }
        os.replace(partial, root / INT8_FILE)
    finally:
        partial.unlink(missing_ok=True)
        torch.set_num_threads(threads)
    spec.quantization = record
    spec.save(root)
    return record


def _agreement(p32: np.ndarray, p8: np.ndarray, threshold: float) -> dict[str, Any]:
    """How the int8 probabilities of the same pairs agree with the fp32 ones."""
    changed = int(((p32 >= threshold) != (p8 >= threshold)).sum())
    return {
        "pairs": len(p32),
        "threshold": threshold,
        "changed_decisions": changed,
        "agreement": round(1 - changed / len(p32), 6),
        "max_abs_probability_difference": round(float(np.abs(p32 - p8).max()), 6),
        "mean_abs_probability_difference": round(float(np.abs(p32 - p8).mean()), 6),
    }
