"""Encoders: torchvision's ResNets, or any timm CNN named ``timm/NAME``.

An encoder maps a batch of images to a feature map (N, C, h, w): the heads pool it, and
Grad-CAM weighs its channels. torchvision's ResNets lose their pooling and classifier
(``Sequential(*children()[:-2])``, the original sample's layout, which its weights need).
timm's backbones are built with ``num_classes=0`` and ``global_pool=""``, so timm itself
removes both. What the spec must know of a timm backbone (channels, downsampling, and the
preprocessing from timm's data config) is measured once by :func:`describe` and recorded,
so serving needs nothing but the spec and timm.

Transformers (ViT, DINOv2, ...) return tokens, not a map; they are refused by name rather
than half-supported.
"""

from __future__ import annotations

import functools
import math
import socket
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from twinnet.core.spec import check_arch, is_timm
from twinnet.errors import SpecError, TwinnetError

__all__ = [
    "PretrainedWeightsError",
    "describe",
    "backbone_fields",
    "build_encoder",
    "classifier_prefixes",
    "CLASSIFIER_PREFIXES",
]

_HUB = ("huggingface.co", 443)
#: Key prefixes of the classifier in a checkpoint that names none: torchvision's ``fc``,
#: and the names other networks use.
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.")


class PretrainedWeightsError(TwinnetError):
    """Pretrained weights could not be fetched (usually: no internet)."""


def _timm():
    try:
        import timm
    except ImportError:
        raise TwinnetError(
            "timm backbones need timm: pip install 'twinnet[serve]' (or pip install timm)"
        ) from None
    return timm


def _create_timm(arch: str, **kwargs: Any) -> nn.Module:
    timm = _timm()
    name = arch.split("/", 1)[1]
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:8]
        raise SpecError(
            f"timm has no model {name!r}"
            + (f"; close names: {', '.join(close)}" if close else "")
            + " (timm.list_models() lists them all)"
        )
    return timm.create_model(name, num_classes=0, global_pool="", **kwargs)


def _reduction(net: nn.Module, side: int, out_side: int) -> int:
    """How many input pixels one feature-map cell spans: timm's feature_info, else measured."""
    info = getattr(net, "feature_info", None)
    if isinstance(info, list) and info and isinstance(info[-1], dict) and "reduction" in info[-1]:
        return int(info[-1]["reduction"])
    return 2 ** round(math.log2(max(1.0, side / out_side)))


@functools.lru_cache(maxsize=16)
def describe(arch: str) -> dict[str, Any]:
    """What the spec records of a timm backbone, measured on a randomly initialised copy.

    Returns ``channels`` and ``reduction`` of its feature map (one forward pass at its
    default input size), timm's data config (``input_size``, ``interpolation``, ``mean``,
    ``std``, ``crop_pct``) and timm's version. Raises :class:`SpecError` for a transformer.
    """
    timm = _timm()
    net = _create_timm(arch).eval()
    config = timm.data.resolve_model_data_config(net)
    side = int(config["input_size"][-1])
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, 3, side, side))
    except Exception as exc:  # noqa: BLE001 - a model timm builds but cannot run as asked
        raise SpecError(f"{arch} does not run on a {side} px image: {exc}") from None
    width = int(getattr(net, "head_hidden_size", None) or net.num_features)
    if out.ndim != 4 or (out.shape[-1] == width and out.shape[1] != width):  # tokens, or NHWC
        raise SpecError(
            f"{arch} returns tokens of shape {tuple(out.shape)}, not a feature map: "
            "transformer backbones (ViT, DINOv2, ...) are not supported. Choose a timm CNN, "
            "for example timm/convnext_tiny, timm/efficientnet_b0 or timm/resnet50d."
        )
    return {
        "library": "timm",
        "version": timm.__version__,
        "channels": int(out.shape[1]),
        "reduction": _reduction(net, side, out.shape[-1]),
        "input_size": side,
        "interpolation": str(config.get("interpolation", "bilinear")),
        "mean": [float(v) for v in config["mean"]],
        "std": [float(v) for v in config["std"]],
        "crop_pct": float(config.get("crop_pct", 1.0)),
        "hf_hub_id": net.pretrained_cfg.get("hf_hub_id") or "",
    }


def backbone_fields(arch: str, image_size: int | None = None) -> dict[str, Any]:
    """The :class:`ModelSpec` fields an encoder decides: for timm, from its data config.

    ``image_size`` overrides the backbone's default input side.
    """
    if not is_timm(check_arch(arch)):
        return {} if image_size is None else {"image_size": image_size}  # the spec's defaults
    info = describe(arch)
    return {
        "image_size": image_size or info["input_size"],
        "mean": tuple(info["mean"]),
        "std": tuple(info["std"]),
        "interpolation": info["interpolation"],
        "backbone": {k: info[k] for k in ("library", "version", "channels", "reduction",
                                          "input_size", "crop_pct", "hf_hub_id")},
    }  # fmt: skip


@contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _hub_reachable(timeout: float = 5.0) -> bool:
    try:
        socket.create_connection(_HUB, timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_timm_file(hub_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return found
    return None


def _pretrained_timm(arch: str) -> nn.Module:
    """A timm backbone with its pretrained weights: from timm's cache, else the hub."""
    hub_id = describe(arch)["hf_hub_id"]
    cached = _cached_timm_file(hub_id) if hub_id else None
    if cached:
        return _create_timm(arch, pretrained=True, pretrained_cfg_overlay={"file": cached})
    url = f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors"
    # The hub client retries for about a minute without a network; ask the network first.
    if not hub_id or not _hub_reachable():
        raise PretrainedWeightsError(
            f"could not download pretrained weights for {arch}: huggingface.co is not "
            f"reachable. Without internet, download {url} elsewhere and pass it with "
            "--encoder-weights FILE; or train from scratch with --no-pretrained."
        )
    try:
        with _socket_timeout(20):
            return _create_timm(arch, pretrained=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise PretrainedWeightsError(
            f"could not download pretrained weights for {arch} ({exc.__class__.__name__}: "
            f"{exc}). Download {url} elsewhere and pass it with --encoder-weights FILE."
        ) from None


def _torchvision_encoder(arch: str, pretrained: bool) -> nn.Sequential:
    import torchvision

    ctor = getattr(torchvision.models, arch)
    if not pretrained:
        return nn.Sequential(*list(ctor(weights=None).children())[:-2])
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    try:
        with _socket_timeout(20):
            net = ctor(weights=weights)
    except (OSError, RuntimeError, ValueError) as exc:
        raise PretrainedWeightsError(
            f"could not download ImageNet weights for {arch} ({exc.__class__.__name__}: "
            f"{exc}). Without internet, download {weights.url} elsewhere and pass it with "
            f"--encoder-weights FILE (or place it in {torch.hub.get_dir()}/checkpoints); "
            "or train from scratch with --no-pretrained."
        ) from None
    return nn.Sequential(*list(net.children())[:-2])


def build_encoder(arch: str, pretrained: bool = False) -> nn.Module:
    """The encoder ``arch`` names, mapping images to a feature map (N, C, h, w).

    Raises:
        PretrainedWeightsError: ``pretrained`` and the weights are neither cached nor
            downloadable; the message names the file to fetch and ``--encoder-weights``.
    """
    check_arch(arch)
    if not is_timm(arch):
        return _torchvision_encoder(arch, pretrained)
    # A spec for a timm arch exists only once describe() has accepted it (backbone_fields).
    return _pretrained_timm(arch) if pretrained else _create_timm(arch)


def classifier_prefixes(encoder: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the classifier a full checkpoint of ``encoder``'s network carries.

    A timm encoder has none (``num_classes=0``), but its checkpoints do: timm's
    ``pretrained_cfg`` names the layer. torchvision's ResNets call it ``fc``.
    """
    names = (getattr(encoder, "pretrained_cfg", None) or {}).get("classifier")
    if not names:
        return CLASSIFIER_PREFIXES
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)
