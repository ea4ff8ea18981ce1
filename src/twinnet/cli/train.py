"""Subcommands of the train stage: train, evaluate, info, import-seed, export-seed."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from twinnet.core.artifacts import export_seed, import_seed
from twinnet.core.spec import ARCHS, ModelSpec
from twinnet.data.datasets import DATASETS, resolve_source
from twinnet.errors import TwinnetError
from twinnet.evaluate.calibrate import recalibrate
from twinnet.evaluate.verification import evaluate, evaluation_items
from twinnet.infer.runtime import PRECISIONS
from twinnet.infer.twin import Twin
from twinnet.train.config import add_arguments, from_args
from twinnet.train.fit import train

__all__ = ["register"]


def _data_dir(args: argparse.Namespace) -> str | None:
    """DATA_DIR and its alias --data must not disagree."""
    if args.data_dir and args.data and Path(args.data_dir) != Path(args.data):
        raise TwinnetError(f"DATA_DIR {args.data_dir} and --data {args.data} disagree; give one")
    return args.data_dir or args.data


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", nargs="?", metavar="DATA_DIR", help="labelled image folder")
    p.add_argument("--data", metavar="DIR", help="the same as DATA_DIR")
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        help="digits: scikit-learn's handwritten digits (offline); pets: Oxford-IIIT Pet (download)",
    )
    p.add_argument(
        "--labels",
        help="'folder' (class = parent folder) or 'regex:PATTERN' (group 1 of the file name)",
    )


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


# --------------------------------------------------------------------------- train


def _train(args: argparse.Namespace) -> int:
    cfg = from_args(args, data=_data_dir(args))
    result = train(cfg)
    if result.lr_suggestion is not None:
        print(f"lr_find: suggested learning rate (valley) {result.lr_suggestion:.2e}")
        return 0
    if result.model_dir is None:  # a torchrun rank other than 0
        return 0
    m = result.metrics
    print(
        f"validation ({result.spec.split['mode']} split): pair accuracy {_fmt(m['pair_accuracy'])} "
        f"at threshold {result.spec.threshold:.4f}, ROC AUC {_fmt(m['pair_auc'])}, "
        f"EER {_fmt(m.get('pair_eer'))} on {m['valid_pairs']} pairs"
    )
    print(f"model directory: {result.model_dir}")
    return 0


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a twin network on a labelled image folder",
        description=(
            "Train a twin network with fastai and write a model directory. The default cosine "
            "head learns an embedding and fits its threshold on classes held out of training, "
            "so it answers for new classes; --head concat is the original sample's pair head."
        ),
    )
    _add_data_args(p)
    add_arguments(p)
    p.set_defaults(func=_train)


# --------------------------------------------------------------------------- evaluate


def _labelled_data(args: argparse.Namespace, default_to_training: bool) -> tuple[str, str | None]:
    """DATA_DIR, --data or --dataset, and the label source; optionally the training folder."""
    data, fallback = _data_dir(args), None
    if default_to_training and not data and not args.dataset:
        fallback = ModelSpec.load(args.model_dir).recipe.get("data")
    root, labels = resolve_source(data, args.dataset, args.labels, fallback)
    return str(root), labels


def _evaluate(args: argparse.Namespace) -> int:
    data, labels = _labelled_data(args, default_to_training=True)
    if args.pairs < 0 or args.trials < 1:
        raise TwinnetError("--pairs must be >= 0 and --trials >= 1")
    twin = Twin.load(args.model_dir, device=args.device, precision=args.precision)
    items = evaluation_items(data, twin.spec, labels=labels, held_out=args.held_out)
    report = evaluate(
        twin, items, pairs=args.pairs, way=args.way, trials=args.trials, seed=args.seed
    )
    report = {"model": str(args.model_dir), "data": str(data), "held_out": args.held_out, **report}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    scope = "held-out images of " if args.held_out else ""
    print(
        f"evaluating {args.model_dir} on {scope}{data}: {report['images']} images, {report['classes']} classes"
    )
    if "accuracy" in report:
        print(
            f"pairs: accuracy {_fmt(report['accuracy'])} at threshold {report['threshold']:.4f}, "
            f"ROC AUC {_fmt(report['auc'])}, EER {_fmt(report['eer'])} "
            f"over {report['pairs']} balanced pairs (seed {args.seed})"
        )
        tars = ", ".join(f"{_fmt(t)} at FAR {far}" for far, t in report["tar_at_far"].items())
        print(f"pairs: TAR {tars}")
        if "kfold_accuracy" in report:
            print(
                f"pairs: 10-fold accuracy {_fmt(report['kfold_accuracy'])} "
                f"± {_fmt(report['kfold_std'])} (each fold's threshold chosen on the other nine)"
            )
    if "way_accuracy" in report:
        print(
            f"{report['way']}-way one-shot: accuracy {_fmt(report['way_accuracy'])} "
            f"over {report['trials']} trials (chance {1 / report['way']:.4f})"
        )
    return 0


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="pair accuracy, ROC AUC, EER, TAR@FAR, 10-fold and N-way accuracy of a model",
        description="Evaluate a model directory on a labelled image folder. For a model "
        "trained with --split classes, use classes it never saw (another folder, or --held-out). "
        "DATA_DIR defaults to the folder the model was trained on.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    _add_data_args(p)
    p.add_argument(
        "--held-out",
        action="store_true",
        help="only the images the model was validated on (its held-out classes or files)",
    )
    p.add_argument("--pairs", type=int, default=2000, help="balanced pairs to score (0: none)")
    p.add_argument("--way", type=int, help="N of an N-way one-shot evaluation")
    p.add_argument("--trials", type=int, default=400, help="N-way episodes (default 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--precision", default="auto", choices=PRECISIONS,
        help="encoder precision (default auto: int8 when the model has a quantized encoder "
        "and the CPU has VNNI, else bf16 where the CPU has it, else fp32)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_evaluate)


# --------------------------------------------------------------------------- calibrate


def _calibrate(args: argparse.Namespace) -> int:
    data, labels = _labelled_data(args, default_to_training=False)
    before, after = recalibrate(
        args.model_dir,
        data,
        labels=labels,
        target=args.target,
        pairs=args.pairs,
        seed=args.seed,
    )
    print(
        f"calibrating {args.model_dir} on {data} (target {after['target']}, {after['pairs']} pairs)"
    )
    print(f"{'':<10}{'threshold':>10}{'accuracy':>10}{'FAR':>8}{'FRR':>8}")
    for name, row in (("before", before), ("after", after)):
        print(
            f"{name:<10}{row['threshold']:>10.4f}{row['accuracy']:>10.4f}"
            f"{row['far']:>8.4f}{row['frr']:>8.4f}"
        )
    print(f"EER {after['eer']:.4f}; wrote {after['spec']} (re-archive a served model to use it)")
    return 0


def _register_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="re-fit a cosine model's threshold (and score mapping) on your own labelled data",
        description="Fit the cosine-to-probability mapping and the decision threshold of a "
        "model on a labelled folder, without retraining, and write them into its twinnet.json "
        "(atomically). Use classes the model was not trained on, like the ones it will meet.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    _add_data_args(p)
    p.add_argument(
        "--target",
        default="accuracy",
        help="accuracy (default), eer, or far=X: the threshold with false accept rate <= X",
    )
    p.add_argument(
        "--pairs", type=int, default=20000, help="balanced pairs to draw (default 20000)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_calibrate)


# --------------------------------------------------------------------------- info, seed format


def _print_training(spec) -> None:
    """The recipe and the metrics lines of ``twinnet info``."""
    r = spec.recipe
    if r.get("source") == "seed-import":
        print("recipe     imported from the seed format")
    elif r:
        preset = f"{r['recipe']}: " if r.get("recipe") else ""
        print(
            f"recipe     {preset}pretrained={r.get('pretrained')} "
            f"frozen_epochs={r.get('frozen_epochs')} lr={r.get('lr')} epochs={r.get('epochs')} "
            f"lr=slice({r.get('lr_lo')}, {r.get('lr_hi')}) bs={r.get('bs')} "
            f"loss={r.get('loss')} sampler={r.get('sampler', 'balanced')} "
            f"aug={r.get('augment')} wd={r.get('wd')} processes={r.get('world_size')}"
        )
    start = r.get("start") if r else None
    if start and "init" in start:
        head = "head taken" if start.get("head_taken") else "head started fresh"
        print(f"start      {start['init']} ({start.get('name')}, {head})")
    elif start:
        print(f"start      encoder weights {start.get('encoder_weights')}")
    kept = r.get("kept") if r else None
    if kept:
        scores = ", ".join(f"{s:.4f}" for s in kept["scores"])
        mix = kept.get("mix")
        print(
            f"kept       {kept['kept']} (held-out pair AUC: start, then each epoch: {scores}"
            + ("" if mix is None else f"; mixture of start and last epoch: {mix:.4f}") + ")"
        )  # fmt: skip
    m = spec.metrics
    chosen = m.get("readout") if m else None
    if chosen:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in chosen["scores"].items())
        print(f"readout    {chosen['kept']} (held-out pair AUC: {scores})")
    if m:
        first = f"valid loss {_fmt(m.get('valid_loss'))}, "
        if m.get("valid_accuracy") is not None:
            first += f"accuracy {_fmt(m.get('valid_accuracy'))}, "
        print(
            f"metrics    {first}pair accuracy {_fmt(m.get('pair_accuracy'))}, ROC AUC "
            f"{_fmt(m.get('pair_auc'))}, EER {_fmt(m.get('pair_eer'))} "
            f"({m.get('valid_pairs')} validation pairs)"
        )
        for i, row in enumerate(m.get("history", [])):
            cells = "  ".join(f"{k} {_fmt(v)}" for k, v in row.items())
            print(f"  epoch {i:<3} {cells}")


def _info(args: argparse.Namespace) -> int:
    spec = ModelSpec.load(args.model_dir)
    if args.json:
        print(json.dumps(spec.to_dict(), indent=2))
        return 0
    print(f"model      {spec.name} ({args.model_dir})")
    head = f"{spec.head} head" + (
        f", {spec.embedding_width}-d embedding ({spec.readout})" if spec.has_embeddings else ""
    )
    print(
        f"network    {spec.arch} at {spec.image_size} px ({spec.resize_method}), {head}, "
        f"threshold {spec.threshold:.4f}"
    )
    c = spec.calibration
    if c:
        print(
            f"calibration {c.get('pairs')} pairs of {c.get('method')}, target {c.get('target')}: "
            f"threshold at cosine {_fmt(c.get('score_threshold'))}, EER {_fmt(c.get('eer'))}, "
            f"accuracy {_fmt(c.get('accuracy'))}"
        )
    print(f"labels     {spec.labels}")
    if spec.classes:
        counts = sorted(spec.classes.values())
        print(
            f"data       {sum(counts)} images in {len(counts)} classes "
            f"({counts[0]}-{counts[-1]} per class)"
        )
    if spec.split:
        s = spec.split
        print(
            f"split      {s.get('mode')} (valid {s.get('valid_pct')}, seed {s.get('seed')}): "
            f"{s.get('train_images')} train / {s.get('valid_images')} valid images, "
            f"{len(s.get('train_classes', []))} / {len(s.get('valid_classes', []))} classes"
        )
    _print_training(spec)
    if spec.versions:
        print("versions   " + ", ".join(f"{k} {v}" for k, v in spec.versions.items()))
    return 0


def _import_seed(args: argparse.Namespace) -> int:
    out = import_seed(
        args.encoder_pth, args.head_pth, args.out, arch=args.arch, image_size=args.size
    )
    print(f"model directory: {out}")
    return 0


def _export_seed(args: argparse.Namespace) -> int:
    enc, head = export_seed(args.model_dir, args.out)
    print(f"wrote {enc} and {head}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the `twinnet` parser."""
    _register_train(sub)
    _register_evaluate(sub)
    _register_calibrate(sub)

    p = sub.add_parser("info", help="print a model's spec and training metrics")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--json", action="store_true", help="print twinnet.json as it is")
    p.set_defaults(func=_info)

    p = sub.add_parser(
        "import-seed",
        help="turn the original sample's encoder_weight.pth/head_weight.pth into a model directory",
    )
    p.add_argument("encoder_pth", metavar="ENCODER_PTH")
    p.add_argument("head_pth", metavar="HEAD_PTH")
    p.add_argument("--out", required=True, metavar="MODEL_DIR")
    p.add_argument("--arch", choices=tuple(ARCHS), default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.set_defaults(func=_import_seed)

    p = sub.add_parser(
        "export-seed", help="write a model as the sample's encoder_weight.pth and head_weight.pth"
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=_export_seed)
