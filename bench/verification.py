"""Verification on classes never seen in training: cosine head vs concat head vs raw pixels.

For each data set, both heads train with the same data, budget and seed, and are evaluated on
the same unseen classes with the same seeded pairs. The raw-pixel baseline (cosine of the
mean-centred pixels at the model's input size) sits beside them, so every figure has its
floor. Each threshold is fixed before the test classes are seen: the cosine head's comes from
its calibration on classes held out of training; the concat head's is the sample's 0.5; the
raw-pixel baseline's is calibrated on the same held-out training classes. "best acc" is the
accuracy at the best threshold chosen on the test pairs themselves (an upper bound), so
"acc - best" shows what calibration loses.

Data sets:
- AT&T faces (../shared/data/att-faces): train on s1-s30 (a quarter of them held out for
  calibration), test on s31-s40; resnet18 from scratch.
- scikit-learn digits: train on 0-6 (two held out for calibration), test on 7-9.
- Omniglot (../shared/data/omniglot-background, or --data DIR): an alphabet-disjoint split,
  24 alphabets to train on and 6 (drawn with seed 0) to test on; or, with --test DIR (the 20
  evaluation alphabets), all of DIR to train on and --test to test on. The rows are recipes
  rather than heads: ``--recipe small-grey`` (the default command for such data) against the
  previous defaults (CosFace 0.35/30 on class-balanced batches, fastai's flips and warps,
  a fifth of the classes held out for calibration), both resnet18 at 48 px for 10 epochs.

    .venv/bin/python bench/verification.py [--quick] [--only att|digits|omniglot]
        [--heads cosine,concat] [--data OMNIGLOT_DIR] [--test DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ATT = ROOT.parent / "shared" / "data" / "att-faces"
OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot-background"

#: (name, train args) per data set; the budget is the same for both heads.
RECIPES = {
    "att": {
        "size": 96, "epochs": 12, "lr": 3e-3, "bs": 32, "valid_pct": 0.25, "epoch_pairs": 1024,
    },
    "digits": {
        "size": 32, "epochs": 8, "lr": 3e-3, "bs": 32, "valid_pct": 0.3, "epoch_pairs": 1024,
    },
    "omniglot": {"epochs": 10},
}  # fmt: skip
#: Omniglot's rows: the command a user types, and the defaults before ``--recipe small-grey``.
OMNIGLOT_ROWS = {
    "small-grey (default)": {"recipe": "small-grey"},
    "previous defaults": {
        "arch": "resnet18", "size": 48, "pretrained": False, "frozen_epochs": 0, "lr": 3e-3,
        "bs": 64, "loss": "cosface", "sampler": "balanced", "augment": "fastai",
        "calib_max_classes": 10**6,
    },
}  # fmt: skip
#: Alphabets of the background set held out for testing when no --test folder is given.
OMNIGLOT_TEST_ALPHABETS = 6
PAIRS = 2000
WAY = 10
TRIALS = 400


def copy_classes(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copytree(src / name, dst / name)
    return dst


def prepare_omniglot(work: Path, data: Path, test: Path | None) -> tuple[Path, Path]:
    """Training and test folders of Omniglot, disjoint by alphabet (the part before ``__``)."""
    if not data.is_dir():
        raise SystemExit(f"{data} not found (the Omniglot background set lives in ../shared/data)")
    if test is not None:
        return data, test
    names = sorted(p.name for p in data.iterdir() if p.is_dir())
    alphabets = sorted({n.split("__")[0] for n in names})
    held = set(np.random.default_rng(0).choice(alphabets, OMNIGLOT_TEST_ALPHABETS, replace=False))
    print(f"[omniglot] unseen alphabets: {', '.join(sorted(held))}", file=sys.stderr)
    train = copy_classes(
        data, work / "omniglot-train", [n for n in names if n.split("__")[0] not in held]
    )
    test = copy_classes(
        data, work / "omniglot-test", [n for n in names if n.split("__")[0] in held]
    )
    return train, test


def prepare(
    name: str, work: Path, data: Path = OMNIGLOT, test: Path | None = None
) -> tuple[Path, Path, int]:
    """Training folder, unseen test folder and the N of N-way for one data set."""
    if name == "omniglot":
        return (*prepare_omniglot(work, data, test), 20)
    if name == "att":
        if not ATT.is_dir():
            raise SystemExit(f"{ATT} not found (the AT&T faces live in ../shared/data)")
        train = copy_classes(ATT, work / "att-train", [f"s{i}" for i in range(1, 31)])
        test = copy_classes(ATT, work / "att-test", [f"s{i}" for i in range(31, 41)])
        return train, test, 10
    from twinnet.data.datasets import export_digits

    root = export_digits()
    train = copy_classes(root, work / "digits-train", [str(d) for d in range(7)])
    test = copy_classes(root, work / "digits-test", [str(d) for d in range(7, 10)])
    return train, test, 3


def raw_pixel_row(
    spec,
    train: Path,
    test: Path,
    calib_classes: list[str],
    way: int,
    pairs: int = PAIRS,
    trials: int = TRIALS,
) -> dict:
    """The raw-pixel cosine baseline, calibrated on the model's calibration classes."""
    from twinnet.core.calibration import fit_calibration
    from twinnet.core.imaging import build_transforms, decode_image
    from twinnet.core.metrics import best_threshold, eer, roc_auc
    from twinnet.data.items import check_images, draw_pairs, scan_folder

    pre = build_transforms(spec)

    def embed(items):
        x = np.stack([pre.to_unit_tensor(decode_image(f)).numpy().ravel() for f in items.files])
        x = x - x.mean(axis=1, keepdims=True)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def pair_scores(items, seed_tag):
        emb = embed(items)
        drawn = draw_pairs(items.labels, pairs, np.random.default_rng(seed_tag), swap=True)
        return np.einsum("nd,nd->n", emb[drawn[:, 0]], emb[drawn[:, 1]]), drawn[:, 2].astype(bool)

    all_train, _ = check_images(scan_folder(train))
    keep = [i for i, lab in enumerate(all_train.labels) if all_train.classes[lab] in calib_classes]
    cal_cos, cal_same = pair_scores(all_train.subset(keep), [0, 13])
    cal = fit_calibration(cal_same, cal_cos, "accuracy", method="raw pixels")
    items, _ = check_images(scan_folder(test))
    cos, same = pair_scores(items, [0, 10])
    accepted = cos >= cal.score_threshold
    emb = embed(items)
    rng = np.random.default_rng([0, 11])
    by_class = [np.flatnonzero(items.labels == c) for c in range(len(items.classes))]
    correct = 0
    for _ in range(trials):
        target = int(rng.integers(len(by_class)))
        others = rng.choice(
            [c for c in range(len(by_class)) if c != target], way - 1, replace=False
        )
        query, support = rng.choice(by_class[target], 2, replace=False)
        gallery = [support] + [rng.choice(by_class[c]) for c in others]
        correct += int(np.argmax(emb[gallery] @ emb[query]) == 0)
    return {
        "model": "raw pixels",
        "train_s": 0.0,
        "accuracy": float(np.mean(accepted == same)),
        "best_accuracy": best_threshold(same, cos)[1],
        "auc": roc_auc(same, cos),
        "eer": eer(same, cos)[0],
        "way_accuracy": correct / trials,
    }


def head_config(head: str, recipe: dict) -> dict:
    """TrainConfig fields of one head on the AT&T or digits recipe."""
    return dict(
        split="classes", valid_pct=recipe["valid_pct"], arch="resnet18", size=recipe["size"],
        pretrained=False, frozen_epochs=0, epochs=recipe["epochs"], lr=recipe["lr"],
        bs=recipe["bs"], head=head, epoch_pairs=recipe["epoch_pairs"],
    )  # fmt: skip


def evaluation_row(
    label: str,
    model_dir: Path,
    test: Path,
    way: int,
    pairs: int = PAIRS,
    seconds: float = 0.0,
    trials: int = TRIALS,
) -> dict:
    """A trained model on the unseen classes: at its own threshold, and at the best one."""
    from twinnet.core.metrics import best_threshold
    from twinnet.data.items import draw_pairs
    from twinnet.evaluate.verification import evaluate, evaluation_items
    from twinnet.infer.twin import Twin

    twin = Twin.load(model_dir)
    items = evaluation_items(test, twin.spec)
    report = evaluate(twin, items, pairs=pairs, way=way, trials=trials, seed=0)
    # best possible threshold on the test pairs themselves, from the same pairs' margins
    drawn = draw_pairs(items.labels, pairs, np.random.default_rng([0, 10]), swap=True)
    files = [str(f) for f in items.files]
    res = twin.compare_batch([(files[a], files[b]) for a, b, _ in drawn])
    margins = np.array([r.logits[1] - r.logits[0] for r in res])
    return {
        "model": label,
        "train_s": seconds,
        "accuracy": report["accuracy"],
        "best_accuracy": best_threshold(drawn[:, 2].astype(bool), margins)[1],
        "auc": report["auc"],
        "eer": report["eer"],
        "way_accuracy": report["way_accuracy"],
    }


def model_row(
    label: str,
    fields: dict,
    train: Path,
    test: Path,
    way: int,
    out: Path,
    pairs: int = PAIRS,
    seed: int = 0,
    trials: int = TRIALS,
) -> dict:
    """Train one configuration, then evaluate it on the unseen classes."""
    from twinnet.train.config import TrainConfig
    from twinnet.train.fit import train as run_train

    cfg = TrainConfig(out=str(out), data=str(train), seed=seed, workers=0, **fields)
    started = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = run_train(cfg)
    seconds = time.monotonic() - started
    return {
        **evaluation_row(label, out, test, way, pairs, seconds, trials),
        "calib_classes": result.spec.split.get("calibration_classes")
        or result.spec.split.get("valid_classes", []),
        "spec": result.spec,
    }


def configurations(name: str, recipe: dict, heads: list[str]) -> dict[str, dict]:
    """The rows to train for one data set: label -> TrainConfig fields."""
    if name == "omniglot":
        return {
            label: {**fields, "epochs": recipe["epochs"]} for label, fields in OMNIGLOT_ROWS.items()
        }
    return {f"{head} head": head_config(head, recipe) for head in heads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=tuple(RECIPES), help="one data set")
    parser.add_argument("--heads", default="cosine,concat", help="comma-separated heads")
    parser.add_argument("--quick", action="store_true", help="a quarter of the epochs")
    parser.add_argument("--data", type=Path, default=OMNIGLOT, help="Omniglot background folder")
    parser.add_argument(
        "--test", type=Path, help="Omniglot folder to test on (all of --data trains)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    names = [args.only] if args.only else list(RECIPES)
    if not args.only and not args.data.is_dir():
        print(f"[omniglot] skipped: {args.data} not found", file=sys.stderr)
        names.remove("omniglot")
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="twinnet-verif-") as tmp:
        work = Path(tmp)
        for name in names:
            recipe = dict(RECIPES[name])
            if args.quick:
                recipe["epochs"] = max(1, recipe["epochs"] // 4)
            train, test, way = prepare(name, work, args.data, args.test)
            pairs = 2 * PAIRS if name == "omniglot" else PAIRS
            model_rows = []
            for label, fields in configurations(name, recipe, heads).items():
                print(f"[{name}] training {label} ...", file=sys.stderr, flush=True)
                out = work / f"{name}-{len(model_rows)}"
                model_rows.append(model_row(label, fields, train, test, way, out, pairs))
            spec = model_rows[0]["spec"]
            calib = model_rows[0]["calib_classes"]
            baseline = raw_pixel_row(spec, train, test, calib, way, pairs)
            for row in [*model_rows, baseline]:
                row.pop("spec", None)
                row.pop("calib_classes", None)
                rows.append({"data": name, "way": way, "pairs": pairs, **row})
    print(
        "\n| data | model | train s | pair acc (calibrated) | best acc | acc - best | AUC | EER "
        "| N-way |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for r in rows:
        print(
            f"| {r['data']} | {r['model']} | {r['train_s']:.0f} | {r['accuracy']:.4f} | "
            f"{r['best_accuracy']:.4f} | {r['accuracy'] - r['best_accuracy']:+.4f} | "
            f"{r['auc']:.4f} | {r['eer']:.4f} | {r['way_accuracy']:.4f} ({r['way']}-way) |"
        )
    print(
        f"\n{PAIRS} balanced pairs ({2 * PAIRS} for Omniglot) and {TRIALS} N-way trials of the "
        "unseen classes, seed 0"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
