"""Encoder weights from a file: a state dict as safetensors, or a ``.pth`` read weights-only.

The offline way to start from ImageNet (or any) weights: ``twinnet train --encoder-weights
FILE``. For a torchvision encoder, torchvision's key names (``conv1.weight``,
``layer1.0.bn1.running_mean``) and timm's, which are the same for ResNets, are mapped onto
the encoder's (a ``Sequential`` of the ResNet's children: ``0.weight``,
``4.0.bn1.running_mean``). A ``timm/NAME`` encoder is timm's own network, so a timm
checkpoint's names fit as they are. Either way the classifier (``fc.*``, or what timm's
``pretrained_cfg`` names) is dropped, and a file that does not fit is refused with the
missing and unexpected keys and the architecture it seems to be for.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from twinnet.core.backbones import CLASSIFIER_PREFIXES, classifier_prefixes
from twinnet.core.spec import is_timm
from twinnet.errors import TwinnetError

__all__ = ["read_state_dict", "encoder_state", "guess_arch", "load_encoder_weights", "file_digest"]

#: torchvision's (and timm's) ResNet children, in the order of the encoder's ``Sequential``.
_CHILDREN = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
#: Blocks per stage, and whether the blocks are bottlenecks, of each ResNet.
_LAYOUTS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}


def file_digest(*paths: str | os.PathLike) -> str:
    """A blake2b digest of the files' bytes: what identifies the weights a run started from."""
    h = hashlib.blake2b(digest_size=16)
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or of a ``.pth`` state dict (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise TwinnetError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:
            raise TwinnetError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TwinnetError(
            f"{path}: not a weights-only PyTorch state dict ({exc.__class__.__name__}). "
            "Only plain tensors are read; pickled objects are refused."
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a checkpoint that wraps its state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TwinnetError(f"{path}: expected a state dict of tensors")
    return state


def _encoder_key(
    key: str, classifier: tuple[str, ...] = CLASSIFIER_PREFIXES, rename: bool = True
) -> str | None:
    """The encoder's name for a checkpoint's key; None for a key under ``classifier``.

    With ``rename``, torchvision/timm ResNet names become the ``Sequential``'s; a timm
    encoder keeps the names as they are.
    """
    key = key.removeprefix("module.").removeprefix("encoder.")
    if key.startswith(classifier):
        return None
    head, _, rest = key.partition(".")
    if rename and head in _CHILDREN:
        return f"{_CHILDREN[head]}.{rest}"
    return key


def guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """The ResNet whose stage sizes and block kind the keys show, if any."""
    keys = [k for k in (_encoder_key(k) for k in state) if k]
    blocks = []
    for stage in range(4, 8):
        found = {int(m.group(1)) for k in keys if (m := re.match(rf"{stage}\.(\d+)\.", k))}
        blocks.append(max(found) + 1 if found else 0)
    bottleneck = any(re.match(r"\d+\.\d+\.conv3\.", k) for k in keys)
    for arch, (layout, is_bottleneck) in _LAYOUTS.items():
        if tuple(blocks) == layout and bottleneck == is_bottleneck:
            return arch
    return None


def encoder_state(
    encoder: torch.nn.Module, state: dict[str, torch.Tensor], arch: str, source: str
) -> dict[str, torch.Tensor]:
    """``state`` renamed for ``encoder``; a TwinnetError naming what does not fit."""
    classifier, rename = classifier_prefixes(encoder), not is_timm(arch)
    mapped = {
        k2: v for k, v in state.items() if (k2 := _encoder_key(k, classifier, rename)) is not None
    }
    own = encoder.state_dict()
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    wrong = sorted(k for k in set(own) & set(mapped) if own[k].shape != mapped[k].shape)
    if missing or unexpected or wrong:
        seems = guess_arch(state)
        hint = f"; it looks like {seems} weights" if seems and seems != arch else ""

        def some(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = [f"missing {some(missing)}" if missing else "",
                 f"unexpected {some(unexpected)}" if unexpected else "",
                 f"wrong shape {some(wrong)}" if wrong else ""]  # fmt: skip
        raise TwinnetError(
            f"{source} does not fit a {arch} encoder: "
            + "; ".join(p for p in parts if p)
            + f"{hint}. Give --arch to match the file, or a file for {arch}."
        )
    return mapped


def load_encoder_weights(encoder: torch.nn.Module, path: str | os.PathLike, arch: str) -> None:
    """Load a weights file into ``encoder`` exactly (every tensor, right shapes)."""
    state = encoder_state(encoder, read_state_dict(path), arch, str(path))
    encoder.load_state_dict(state, strict=True)
