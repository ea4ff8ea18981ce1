"""Where a run starts: ImageNet (``--pretrained``), an earlier twinnet model (``--init``),
or an encoder weights file (``--encoder-weights``), else random weights.

``--init MODEL_DIR`` always takes the encoder, and the head when its kind and sizes match
(otherwise the head starts fresh, and the run says so). Class proxies belong to the loss and
start fresh: the classes are new. The spec records what the run started from, so a model
can be traced back to the one it was fine-tuned from.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from twinnet.core.artifacts import ENCODER_FILE, HEAD_FILE, load_model_dir
from twinnet.core.spec import ModelSpec
from twinnet.core.weights import file_digest, load_encoder_weights
from twinnet.errors import TwinnetError
from twinnet.train.config import TrainConfig

__all__ = ["with_init_defaults", "apply_start", "init_from"]


def with_init_defaults(cfg: TrainConfig) -> TrainConfig:
    """With ``--init``, the source model's architecture and input size for options left out."""
    if not cfg.init:
        return cfg
    source = ModelSpec.load(cfg.init)
    return replace(cfg, arch=cfg.arch or source.arch, size=cfg.size or source.image_size)


def apply_start(model: Any, spec: ModelSpec, cfg: TrainConfig) -> dict[str, Any] | None:
    """Load the run's starting weights into a freshly built model; what the spec records."""
    if cfg.encoder_weights:
        path = Path(cfg.encoder_weights)
        load_encoder_weights(model.encoder, path, spec.arch)
        print(f"start: encoder weights from {path}")
        return {"encoder_weights": str(path.resolve()), "blake2b": file_digest(path)}
    if cfg.init:
        return init_from(model, spec, cfg.init)
    return None


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def init_from(model: Any, spec: ModelSpec, source: str | Path) -> dict[str, Any]:
    """Copy an earlier model's encoder (and head, when it fits) into ``model``."""
    old, old_spec = load_model_dir(source)
    if old_spec.arch != spec.arch:
        raise TwinnetError(
            f"--init {source} has a {old_spec.arch} encoder and this run builds {spec.arch}; "
            f"leave out --arch, or give --arch {old_spec.arch}"
        )
    model.encoder.load_state_dict(old.encoder.state_dict(), strict=True)
    if old_spec.head != spec.head:
        why = f"the source has a {old_spec.head} head"
    elif _shapes(old.head) != _shapes(model.head):
        why = "its sizes differ (embedding width)"
    else:
        why = ""
        model.head.load_state_dict(old.head.state_dict(), strict=True)
    print(
        f"start: encoder from {source} ({old_spec.name}); head "
        + (f"started fresh: {why}" if why else "taken")
        + "; class proxies start fresh"
    )
    root = Path(source)
    counts = old_spec.classes or {}
    return {
        "init": str(root.resolve()),
        "name": old_spec.name,
        "blake2b": file_digest(root / ENCODER_FILE, root / HEAD_FILE),
        "arch": old_spec.arch,
        "head": old_spec.head,
        "head_taken": not why,
        "data": old_spec.recipe.get("data"),
        "classes": len(counts),
        "images": int(sum(counts.values())),
    }
