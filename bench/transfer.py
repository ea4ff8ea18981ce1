"""How much does starting from a related encoder help a small data set? (``--init``)

An encoder is trained on 24 of Omniglot's 30 background alphabets (``--recipe small-grey``);
the other 6 (drawn with seed 0, as in ``bench/verification.py``) are never shown to it. Two
small data sets then ask what it is worth, each with four rows evaluated on classes that no
model in the row saw, at the threshold fixed in training:

- **digits**: scikit-learn's digits, trained on 0-6 and tested on 7-9 (3-way);
- **Omniglot, 3 alphabets**: trained on 3 of the 6 held-out alphabets, tested on the other 3
  (20-way): "ImageNet, then my small domain" where the domains are close.

The rows: raw pixels (calibrated on the from-scratch model's calibration classes); from
scratch on the small set; the Omniglot encoder zero-shot, at its own threshold, and with its
threshold re-fitted on the small set (``twinnet calibrate``); and the Omniglot encoder
fine-tuned on the small set with ``--init`` and ``twinnet train``'s defaults for a run that
starts from an earlier model. The digits are written as dark strokes on white, as Omniglot's
characters are: an encoder of pen strokes meets pen strokes.

    .venv/bin/python bench/transfer.py [--source OMNIGLOT_MODEL_DIR] [--data OMNIGLOT_DIR]
        [--omniglot-epochs 10] [--only digits|omniglot] [--trials 2000] [--init-lr RATE]

Without ``--source`` the Omniglot model is trained first (about 8 minutes on a 2-core CPU);
a ``--source`` must not have seen the 6 held-out alphabets.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verification import (  # noqa: E402
    OMNIGLOT,
    PAIRS,
    RECIPES,
    TRIALS,
    copy_classes,
    evaluation_row,
    head_config,
    model_row,
    prepare,
    raw_pixel_row,
)

#: Of the 6 held-out alphabets, the first 3 (sorted) are the small set; the others test.
TUNE_ALPHABETS = 3


def split_held(held: Path, work: Path) -> tuple[Path, Path]:
    """The held-out alphabets in two: a small training set, and unseen test alphabets."""
    names = sorted(p.name for p in held.iterdir() if p.is_dir())
    alphabets = sorted({n.split("__")[0] for n in names})
    tune = set(alphabets[:TUNE_ALPHABETS])
    print(f"[omniglot] small set: {', '.join(sorted(tune))}; test: "
          f"{', '.join(a for a in alphabets if a not in tune)}", file=sys.stderr)  # fmt: skip
    return (
        copy_classes(held, work / "small", [n for n in names if n.split("__")[0] in tune]),
        copy_classes(held, work / "unseen", [n for n in names if n.split("__")[0] not in tune]),
    )


def source_model(args: argparse.Namespace, train: Path, work: Path) -> tuple[Path, float]:
    """The Omniglot encoder: ``--source``, or trained here on the 24 alphabets."""
    if args.source is not None:
        return args.source, 0.0
    from twinnet.train.config import TrainConfig
    from twinnet.train.fit import train as run_train

    out = work / "omniglot"
    cfg = TrainConfig(
        out=str(out), data=str(train), recipe="small-grey", epochs=args.omniglot_epochs,
        workers=0,
    )  # fmt: skip
    started = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run_train(cfg)
    return out, time.monotonic() - started


def as_pen_strokes(folder: Path) -> Path:
    """Invert a folder of light-on-dark images in place: dark strokes on paper, as Omniglot's."""
    from PIL import Image, ImageOps

    for path in folder.rglob("*.png"):
        ImageOps.invert(Image.open(path).convert("L")).save(path)
    return folder


def mean_row(label: str, runs: list[dict]) -> dict:
    """The mean of each figure over seeds, with the spread of AUC and N-way."""
    keys = ("train_s", "accuracy", "best_accuracy", "auc", "eer", "way_accuracy")
    row = {"model": label, **{k: float(np.mean([r[k] for r in runs])) for k in keys}}
    row["spread"] = {k: float(np.std([r[k] for r in runs])) for k in ("auc", "way_accuracy")}
    return row


def four_rows(
    source: Path, scratch: dict, tuned: dict, train: Path, test: Path, way: int, work: Path,
    seeds: list[int], trials: int = TRIALS,
) -> list[dict]:  # fmt: skip
    """Raw pixels, from scratch, zero-shot and fine-tuned with ``--init``, on ``test``.

    The trained rows are means over ``seeds``: on a few classes one seed's figure moves by
    several points.
    """
    runs: dict[str, list[dict]] = {"from scratch": [], "Omniglot encoder, --init, fine-tuned": []}
    for seed in seeds:
        for label, fields in zip(runs, (scratch, {**tuned, "init": str(source)}), strict=True):
            runs[label].append(model_row(label, fields, train, test, way,
                                         work / f"{label[:4]}-{seed}", seed=seed,
                                         trials=trials))  # fmt: skip
    first = runs["from scratch"][0]
    for seed, run in zip(seeds, runs["Omniglot encoder, --init, fine-tuned"], strict=True):
        kept = run["spec"].recipe.get("kept") or {}
        scores = ", ".join(f"{v:.4f}" for v in kept.get("scores", []))
        print(f"  --init seed {seed}: kept {kept.get('kept')} (held-out pair AUC: start, then "
              f"each epoch: {scores}; half-way mixture: {kept.get('mix')})",
              file=sys.stderr)  # fmt: skip
    scratch_row, tuned_row = (mean_row(label, r) for label, r in runs.items())
    return [
        raw_pixel_row(first["spec"], train, test, first["calib_classes"], way, trials=trials),
        scratch_row,
        evaluation_row("Omniglot encoder, zero-shot", source, test, way, trials=trials),
        evaluation_row("Omniglot encoder, zero-shot, `twinnet calibrate` on the small set",
                       calibrated_copy(source, train, work / "calibrated"), test, way,
                       trials=trials),
        tuned_row,
    ]  # fmt: skip


def calibrated_copy(source: Path, data: Path, out: Path) -> Path:
    """A copy of ``source`` whose threshold ``twinnet calibrate`` re-fitted on ``data``."""
    from twinnet.evaluate.calibrate import recalibrate

    shutil.copytree(source, out)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        recalibrate(out, data)
    return out


def print_table(title: str, rows: list[dict], way: int, seeds: list[int], trials: int) -> None:
    print(f"\n{title}: {PAIRS} pairs, {trials} {way}-way episodes; trained rows: mean of "
          f"seeds {','.join(map(str, seeds))} (± standard deviation)")  # fmt: skip
    print(f"| start | train s | pair acc (calibrated) | best acc | AUC | EER | {way}-way |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['train_s']:.0f} | {r['accuracy']:.4f} | "
            f"{r['best_accuracy']:.4f} | {_fig(r, 'auc')} | {r['eer']:.4f} | "
            f"{_fig(r, 'way_accuracy')} |"
        )


def _fig(row: dict, key: str) -> str:
    spread = row.get("spread", {})
    return f"{row[key]:.4f}" + (f" ± {spread[key]:.3f}" if key in spread else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, help="an Omniglot model directory to start from")
    ap.add_argument("--data", type=Path, default=OMNIGLOT, help="Omniglot's background folder")
    ap.add_argument("--omniglot-epochs", type=int, default=10)
    ap.add_argument("--only", choices=("digits", "omniglot"))
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the trained rows")
    ap.add_argument(
        "--trials", type=int, default=5 * TRIALS,
        help="N-way episodes per row (at 400, 3-way's standard error is about 0.02)",
    )  # fmt: skip
    ap.add_argument("--init-lr", type=float, help="--init's rate (default: twinnet's)")
    args = ap.parse_args()
    rate = {} if args.init_lr is None else {"lr": args.init_lr}
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="twinnet-transfer-") as tmp:
        work = Path(tmp)
        omniglot_train, held, _ = prepare("omniglot", work, args.data)
        source, source_s = source_model(args, omniglot_train, work)
        if source_s:
            print(f"(the Omniglot encoder trained on 24 alphabets for {source_s:.0f} s first)")
        if args.only != "omniglot":
            train, test, way = prepare("digits", work)
            as_pen_strokes(train), as_pen_strokes(test)
            digits = head_config("cosine", RECIPES["digits"])
            # --init's own schedule: the data's fields only, so the defaults are what is measured
            tuned = {k: digits[k] for k in ("split", "valid_pct", "bs", "head", "epoch_pairs")}
            rows = four_rows(source, digits, {**tuned, **rate}, train, test, way,
                             work / "digits", seeds, args.trials)  # fmt: skip
            print_table("transfer to unseen digits 7-9 (trained on 0-6)", rows, way, seeds,
                        args.trials)  # fmt: skip
        if args.only != "digits":
            small, unseen = split_held(held, work)
            rows = four_rows(source, {"recipe": "small-grey"}, {"recipe": "small-grey", **rate},
                             small, unseen, 20, work / "omniglot-small", seeds,
                             args.trials)  # fmt: skip
            print_table("Omniglot: 3 unseen alphabets (trained on 3 others)", rows, 20, seeds,
                        args.trials)  # fmt: skip


if __name__ == "__main__":
    main()
