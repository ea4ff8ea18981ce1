"""How much does starting from a related encoder help a small data set? (``--init``)

An encoder trained on Omniglot's background characters (964 classes, ``--recipe small-grey``)
meets scikit-learn's digits, which it has never seen. Four rows, all evaluated on the unseen
digits 7-9 at the threshold fixed in training, beside raw pixels:

- from scratch on digits 0-6 (the digits recipe of ``bench/verification.py``);
- the Omniglot encoder zero-shot: 7-9 embedded as it is, at its own Omniglot threshold;
- the Omniglot encoder fine-tuned on 0-6 with ``--init``: frozen, then unfrozen at
  discriminative rates (the fine-tuning recipe);
- raw pixels, calibrated on the from-scratch model's calibration digits.

    .venv/bin/python bench/transfer.py [--source OMNIGLOT_MODEL_DIR] [--data OMNIGLOT_DIR]
        [--omniglot-epochs 10]

Without ``--source`` the Omniglot model is trained first (about 8 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verification import (  # noqa: E402
    OMNIGLOT,
    PAIRS,
    RECIPES,
    TRIALS,
    evaluation_row,
    head_config,
    model_row,
    prepare,
    raw_pixel_row,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, help="an Omniglot model directory to start from")
    ap.add_argument("--data", type=Path, default=OMNIGLOT, help="Omniglot's background folder")
    ap.add_argument("--omniglot-epochs", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="twinnet-transfer-") as tmp:
        work = Path(tmp)
        source, omniglot_s = args.source, 0.0
        if source is None:
            if not args.data.is_dir():
                raise SystemExit(f"{args.data} not found; give --data or --source")
            source = work / "omniglot"
            from twinnet.train.config import TrainConfig
            from twinnet.train.fit import train as run_train

            cfg = TrainConfig(
                out=str(source), data=str(args.data), recipe="small-grey",
                epochs=args.omniglot_epochs, workers=0,
            )  # fmt: skip
            started = time.monotonic()
            run_train(cfg)
            omniglot_s = time.monotonic() - started
        train, test, way = prepare("digits", work)
        digits = RECIPES["digits"]
        scratch = model_row(
            "from scratch on 0-6", head_config("cosine", digits), train, test, way,
            work / "scratch",
        )  # fmt: skip
        tuned_fields = {
            **head_config("cosine", digits), "init": str(source), "size": None,
            "frozen_epochs": 2, "epochs": digits["epochs"] - 2,
        }  # fmt: skip
        tuned = model_row(
            "Omniglot encoder, fine-tuned on 0-6 (--init)", tuned_fields, train, test, way,
            work / "tuned",
        )  # fmt: skip
        rows = [
            raw_pixel_row(scratch["spec"], train, test, scratch["calib_classes"], way),
            scratch,
            evaluation_row("Omniglot encoder, zero-shot", source, test, way),
            tuned,
        ]
    print(f"transfer to unseen digits 7-9: {PAIRS} pairs, {TRIALS} {way}-way episodes, seed 0")
    if omniglot_s:
        print(f"(the Omniglot model trained for {omniglot_s:.0f} s first)")
    print("| start | train s | pair acc (calibrated) | best acc | AUC | EER | 3-way |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['train_s']:.0f} | {r['accuracy']:.4f} | "
            f"{r['best_accuracy']:.4f} | {r['auc']:.4f} | {r['eer']:.4f} | "
            f"{r['way_accuracy']:.4f} |"
        )


if __name__ == "__main__":
    main()
