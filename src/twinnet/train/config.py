"""``twinnet train``'s configuration, written once: the fields, their defaults, the presets.

:class:`TrainConfig` is the one description of a training run. Each field's metadata holds
its command-line help, so :func:`add_arguments` builds the ``twinnet train`` options from
it, defaults included, and :func:`from_args` reads them back. Fields left ``None`` are filled
by :func:`resolve_defaults`: from the named ``recipe`` (:data:`PRESETS`), then from the
defaults for the starting point (:data:`BASE_DEFAULTS`, :data:`RECIPE_DEFAULTS`).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from twinnet.core.spec import ARCHS, HEADS, RESIZE_METHODS, check_arch, is_timm
from twinnet.errors import TwinnetError
from twinnet.infer.runtime import FLOAT_PRECISIONS
from twinnet.train.augment import AUG_POLICIES, policy_name
from twinnet.train.losses import LOSSES, METRIC_LOSSES, PROXY_LOSSES, default_loss

__all__ = [
    "TrainConfig",
    "PRESETS",
    "BASE_DEFAULTS",
    "RECIPE_DEFAULTS",
    "PRETRAINED_LR_RANGE",
    "start_kind",
    "SAMPLERS",
    "CALIB_MAX_CLASSES",
    "resolve_defaults",
    "check_config",
    "calibration_classes",
    "add_arguments",
    "from_args",
]

#: With many classes, a few dozen calibrate the threshold as well as a fifth of them
#: (measured on Omniglot); the rest go to training.
CALIB_MAX_CLASSES = 50
#: (frozen epochs, epochs, lr) by where the encoder starts (:func:`start_kind`):
#: ``pretrained`` (ImageNet, downloaded or from ``--encoder-weights``) is the original
#: sample's recipe; ``init`` (an earlier twinnet model, already a metric space) trains
#: everything at one low rate, which beat frozen-first schedules when measured
#: (bench/transfer.py); ``scratch`` trains everything at once at a higher rate.
RECIPE_DEFAULTS = {"pretrained": (4, 4, 1e-3), "init": (0, 8, 1e-4), "scratch": (0, 12, 3e-3)}
#: The unfrozen learning rates (encoder, head) with pretrained weights; otherwise both are lr.
PRETRAINED_LR_RANGE = (1e-6, 1e-4)
#: The fields of a preset that describe a from-scratch schedule, not the data.
_SCHEDULE = ("frozen_epochs", "epochs", "lr")
#: What a run without a preset starts from: the original sample's Oxford-IIIT Pet recipe.
BASE_DEFAULTS: dict[str, Any] = {
    "arch": "resnet50",
    "size": 224,
    "pretrained": True,
    "bs": 32,
    "augment": "fastai",
}
#: Named recipes: values for the fields a command leaves unset. ``small-grey`` is the
#: measured recipe for small grey images with many classes (handwriting, glyphs, digits).
PRESETS: dict[str, dict[str, Any]] = {
    "small-grey": {
        "arch": "resnet18",
        "size": 48,
        "pretrained": False,
        "frozen_epochs": 0,
        "epochs": 10,
        "lr": 3e-3,
        "bs": 64,
        "sampler": "random",
        "augment": "affine",
    },
}
SAMPLERS = ("balanced", "random")


def _opt(help: str, **cli: Any) -> Any:
    """Field metadata: the option's help, and argparse settings (``flag=None``: no option)."""
    return {"help": help, **cli}


def _arch(value: str) -> str:
    """``--arch``'s type: the name, or argparse's error with :func:`check_arch`'s message."""
    try:
        return check_arch(value)
    except TwinnetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _recipe_help() -> str:
    preset = " ".join(f"{k.replace('_', '-')}={v}" for k, v in PRESETS["small-grey"].items())
    return (
        "a measured preset for the options you leave out. small-grey: small grey images with "
        f"many classes (handwriting, glyphs, digits): {preset}, no flips. Without it: the "
        "sample's Oxford-IIIT Pet recipe"
    )


@dataclass
class TrainConfig:
    """Everything ``twinnet train`` takes; recorded in the spec's ``recipe``.

    ``frozen_epochs``/``epochs``/``lr`` default to the original sample's 4/4/1e-3 with
    pretrained weights, to 0/8/1e-4 with ``--init`` (measured: bench/transfer.py), and from
    scratch to 0/12/3e-3 (freezing a random encoder teaches nothing; measured on AT&T faces
    and digits). ``lr_lo``/``lr_hi`` default to 1e-6/1e-4 with pretrained weights and to
    ``lr`` for every layer group otherwise. For the cosine head, ``bs`` counts images: with the
    ``balanced`` sampler ``per_class`` of each of ``bs // per_class`` classes, with ``random``
    a plain shuffle. For the concat head it counts pairs. ``calib_pct`` is the share of
    classes held out for calibration when ``split`` is ``random``, at most
    ``calib_max_classes`` (:func:`calibration_classes`). ``augment`` is a policy of
    :mod:`twinnet.train.augment` (True means the preset's, False ``none``); ``wd`` is the
    decoupled weight decay (fastai's 0.01 when unset).
    """

    out: str = field(metadata=_opt("model directory to write", required=True, metavar="MODEL_DIR"))
    data: str | None = field(default=None, metadata=_opt("labelled image folder", flag=None))
    dataset: str | None = field(default=None, metadata=_opt("a named data set", flag=None))
    labels: str | None = field(default=None, metadata=_opt("label source", flag=None))
    split: str = field(
        default="random",
        metadata=_opt("hold out random files, or whole classes", choices=("random", "classes")),
    )
    valid_pct: float = field(default=0.2, metadata=_opt("share held out", type=float))
    seed: int = field(default=0, metadata=_opt("seed of split, pairs and weights", type=int))
    recipe: str | None = field(
        default=None, metadata=_opt(_recipe_help(), choices=tuple(PRESETS), show_default=False)
    )
    arch: str | None = field(
        default=None,
        metadata=_opt(
            f"encoder: {', '.join(ARCHS)}, or a timm CNN as timm/NAME (timm/convnext_tiny, "
            "timm/efficientnet_b0, ...)",
            type=_arch,
            metavar="ARCH",
        ),
    )
    size: int | None = field(
        default=None,
        metadata=_opt(
            "square input side in pixels",
            type=int,
            default_text=f"{BASE_DEFAULTS['size']}; a timm backbone's from its data config",
        ),
    )
    resize: str = field(
        default="squish", metadata=_opt("how images reach the square input", choices=RESIZE_METHODS)
    )
    pretrained: bool | None = field(
        default=None,
        metadata=_opt(
            "start from torchvision's ImageNet weights", action=argparse.BooleanOptionalAction
        ),
    )
    init: str | None = field(
        default=None,
        metadata=_opt(
            "start from an earlier twinnet model: its encoder always, its head when it fits; "
            "its arch and size for options left out. A cosine model ends half-way between its "
            "start and its last epoch, or on the start if held-out classes score it higher",
            metavar="MODEL_DIR",
        ),  # fmt: skip
    )
    encoder_weights: str | None = field(
        default=None,
        metadata=_opt(
            "start the encoder from a weights file (safetensors, or .pth read weights-only; "
            "torchvision's or timm's key names), e.g. ImageNet weights downloaded elsewhere",
            metavar="FILE",
        ),
    )
    frozen_epochs: int | None = field(
        default=None, metadata=_opt("epochs with the encoder frozen", type=int)
    )
    epochs: int | None = field(
        default=None, metadata=_opt("epochs with everything trainable", type=int)
    )
    lr: float | None = field(
        default=None, metadata=_opt("learning rate of the first stage", type=float)
    )
    lr_lo: float | None = field(
        default=None, metadata=_opt("unfrozen rate of the encoder", type=float)
    )
    lr_hi: float | None = field(
        default=None, metadata=_opt("unfrozen rate of the head", type=float)
    )
    bs: int | None = field(
        default=None, metadata=_opt("pairs (concat) or images (cosine) per batch", type=int)
    )
    workers: int | None = field(
        default=None,
        metadata=_opt("DataLoader processes", type=int, default_text="0 when images fit in memory"),
    )
    augment: bool | str | None = field(
        default=None,
        metadata=_opt(
            "augment training batches (fastai's aug_transforms, or small affine moves without "
            "flips with --recipe small-grey)",
            flag="--aug",
            action=argparse.BooleanOptionalAction,
            default_text="on",
        ),  # fmt: skip
    )
    epoch_pairs: int | None = field(
        default=None,
        metadata=_opt(
            "training pairs (concat) or images (cosine) per epoch",
            type=int,
            default_text="max(images, 1024)",
        ),  # fmt: skip
    )
    valid_pairs: int | None = field(
        default=None,
        metadata=_opt("concat: validation pairs", type=int, default_text="max(images, 256)"),
    )
    lr_find: bool = field(
        default=False,
        metadata=_opt("run fastai's lr_find, report, and stop", action="store_true"),
    )
    name: str = field(default="twin", metadata=_opt("model name used by servers"))
    threads: int | None = field(
        default=None,
        metadata=_opt("torch CPU threads per process", type=int, default_text="torch's"),
    )
    head: str = field(
        default="cosine",
        metadata=_opt(
            "cosine: embedding + calibrated cosine; concat: the sample's pair head", choices=HEADS
        ),
    )
    loss: str | None = field(
        default=None,
        metadata=_opt(
            "cosine head: cosface, normface, arcface (class proxies), multisimilarity, "
            "contrastive (pairs in a batch); concat head: pair-ce",
            choices=LOSSES,
            default_text="cosface; concat: pair-ce",
        ),  # fmt: skip
    )
    sampler: str | None = field(
        default=None, metadata=_opt("how training batches are drawn", flag=None)
    )
    wd: float | None = field(default=None, metadata=_opt("weight decay", flag=None))
    embedding_dim: int = field(
        default=128,
        metadata=_opt(
            "width of the cosine head's trained projection; the model compares it or the "
            "pooled features before it, whichever its held-out classes separate better",
            type=int,
        ),
    )
    per_class: int = field(
        default=4, metadata=_opt("cosine head: images of each class in a batch", type=int)
    )
    calib_pct: float = field(
        default=0.2,
        metadata=_opt(
            "cosine head with --split random: share of classes held out to fit the threshold "
            f"(at most {CALIB_MAX_CLASSES} classes)",
            type=float,
        ),
    )
    calib_max_classes: int = field(
        default=CALIB_MAX_CLASSES, metadata=_opt("calibration classes, at most", flag=None)
    )
    precision: str = field(
        default="auto",
        metadata=_opt(
            "auto: bf16 autocast on CPUs with native bf16; fp32 turns it off",
            choices=FLOAT_PRECISIONS,
        ),
    )


def _default_text(f: Any) -> str | None:
    """What ``--help`` says the default of field ``f`` is, from the values in this module."""
    meta = f.metadata
    if "default_text" in meta:
        return meta["default_text"]
    if not meta.get("show_default", True) or meta.get("action") == "store_true":
        return None
    if f.name in _SCHEDULE:
        pre, init, scratch = (RECIPE_DEFAULTS[k][_SCHEDULE.index(f.name)]
                              for k in ("pretrained", "init", "scratch"))  # fmt: skip
        return f"{pre:g}; with --init {init:g}; from scratch {scratch:g}"
    if f.name in ("lr_lo", "lr_hi"):
        return f"{PRETRAINED_LR_RANGE[f.name == 'lr_hi']:g}; with --init or from scratch: --lr"
    value = BASE_DEFAULTS.get(f.name, f.default)
    if value is None or value is MISSING:
        return None
    return "yes" if value is True else str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per :class:`TrainConfig` field that has one, help and defaults included."""
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        if flag is None:
            continue
        default = _default_text(f)
        for key in ("default_text", "show_default"):
            meta.pop(key, None)
        if default is not None:
            meta["help"] = f"{meta['help']} (default {default})"
        argparse_default = None if f.default is MISSING or meta.get("required") else f.default
        parser.add_argument(flag, dest=f.name, default=argparse_default, **meta)


def from_args(args: argparse.Namespace, **given: Any) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``twinnet train`` options; ``given`` wins."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**{**values, **given})


def start_kind(cfg: TrainConfig) -> str:
    """Where the encoder starts: ``init``, ``pretrained`` (a download or a file) or ``scratch``."""
    if cfg.init:
        return "init"
    return "pretrained" if cfg.pretrained or cfg.encoder_weights else "scratch"


def resolve_defaults(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every unset field filled: the preset's value, else the default."""
    if cfg.recipe is not None and cfg.recipe not in PRESETS:
        raise TwinnetError(f"--recipe must be one of {', '.join(PRESETS)}, got {cfg.recipe!r}")
    preset = PRESETS.get(cfg.recipe or "", {})
    asked_sampler = cfg.sampler
    warm = bool(cfg.init or cfg.encoder_weights)  # trained weights, not ImageNet's download
    if warm and cfg.pretrained:
        raise TwinnetError(
            "--pretrained downloads ImageNet weights; --init and --encoder-weights start from "
            "weights of their own: give one starting point"
        )
    if warm:
        cfg = replace(cfg, pretrained=False)
    if cfg.augment is True:  # "on": the preset's policy
        cfg = replace(cfg, augment=preset.get("augment", BASE_DEFAULTS["augment"]))
    values = {
        name: preset.get(name, BASE_DEFAULTS.get(name))
        for name in (*BASE_DEFAULTS, *preset)
        if getattr(cfg, name) is None and not (cfg.init and name in _SCHEDULE)
    }
    if is_timm(cfg.arch or values.get("arch", "")) and "size" not in preset:
        values.pop("size", None)  # the backbone's data config decides (backbone_fields)
    cfg = replace(cfg, **values)
    kind = start_kind(cfg)
    frozen, epochs, lr = RECIPE_DEFAULTS[kind]
    loss = cfg.loss or default_loss(cfg.head)
    lo, hi = PRETRAINED_LR_RANGE if kind == "pretrained" else (None, None)
    lr = lr if cfg.lr is None else cfg.lr
    return replace(
        cfg,
        frozen_epochs=frozen if cfg.frozen_epochs is None else cfg.frozen_epochs,
        epochs=epochs if cfg.epochs is None else cfg.epochs,
        lr=lr,
        lr_lo=cfg.lr_lo if cfg.lr_lo is not None else (lo or lr),
        lr_hi=cfg.lr_hi if cfg.lr_hi is not None else (hi or lr),
        loss=loss,
        augment=policy_name(cfg.augment),
        # a preset's random batches suit its proxy loss; a pair loss needs balanced ones
        sampler=asked_sampler
        or (cfg.sampler if cfg.sampler and loss in PROXY_LOSSES else "balanced"),
    )


def check_config(cfg: TrainConfig) -> None:
    """Refuse a resolved configuration that cannot train, with the option to change."""
    if cfg.init and cfg.encoder_weights:
        raise TwinnetError("give --init or --encoder-weights, not both")
    if cfg.frozen_epochs < 0 or cfg.epochs < 0 or cfg.frozen_epochs + cfg.epochs == 0:
        raise TwinnetError("--frozen-epochs and --epochs must be >= 0, and not both 0")
    if cfg.bs < 2:
        raise TwinnetError(f"--bs must be at least 2 (batch norm needs it), got {cfg.bs}")
    for flag, value in (("--epoch-pairs", cfg.epoch_pairs), ("--valid-pairs", cfg.valid_pairs)):
        if value is not None and value < 2:
            raise TwinnetError(f"{flag} must be at least 2, got {value}")
    if any(v is None or v <= 0 for v in (cfg.lr, cfg.lr_lo, cfg.lr_hi)):
        raise TwinnetError("learning rates must be positive")
    if cfg.head not in HEADS:
        raise TwinnetError(f"--head must be one of {', '.join(HEADS)}, got {cfg.head!r}")
    if cfg.loss is not None and cfg.loss not in LOSSES:
        raise TwinnetError(f"--loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if cfg.head == "concat" and cfg.loss not in (None, "pair-ce"):
        raise TwinnetError(f"--loss {cfg.loss} trains a cosine head; --head concat uses pair-ce")
    if cfg.head == "cosine" and cfg.loss == "pair-ce":
        raise TwinnetError(f"--head cosine trains with one of {', '.join(METRIC_LOSSES)}")
    if cfg.augment not in AUG_POLICIES:
        raise TwinnetError(f"augmentation must be one of {', '.join(AUG_POLICIES)}")
    if cfg.sampler not in SAMPLERS:
        raise TwinnetError(f"the sampler must be one of {', '.join(SAMPLERS)}")
    if cfg.head == "cosine" and cfg.sampler == "random" and cfg.loss not in PROXY_LOSSES:
        raise TwinnetError(
            f"--loss {cfg.loss} learns from the pairs inside a batch and needs class-balanced "
            f"batches; random batches suit the class-proxy losses ({', '.join(PROXY_LOSSES)})"
        )
    if cfg.wd is not None and cfg.wd < 0:
        raise TwinnetError(f"weight decay must be >= 0, got {cfg.wd}")
    if cfg.head == "cosine" and not 2 <= cfg.per_class <= cfg.bs // 2:
        raise TwinnetError(
            f"--per-class must be at least 2 and at most --bs/2 ({cfg.bs // 2}), got {cfg.per_class}"
        )
    if not 0.0 < cfg.calib_pct < 1.0:
        raise TwinnetError(f"--calib-pct must lie strictly between 0 and 1, got {cfg.calib_pct}")
    if cfg.precision not in FLOAT_PRECISIONS:
        raise TwinnetError(f"--precision must be one of {', '.join(FLOAT_PRECISIONS)}")


def calibration_classes(
    n_classes: int, calib_pct: float, max_classes: int = CALIB_MAX_CLASSES
) -> int:
    """How many classes ``--split random`` holds out for calibration: ``calib_pct``, at most 50.

    A threshold is one number and its mapping two: a few dozen classes (tens of thousands of
    pairs) fit them as well as a fifth of a large data set does (on Omniglot's unseen
    alphabets, thresholds fitted on 50 and on 161 held-out characters lost 0.0040 and 0.0038
    of accuracy against the best one), and the classes it frees go to training.
    """
    return max(2, min(round(calib_pct * n_classes), max_classes))
