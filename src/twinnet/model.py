"""The twin network: one shared ResNet encoder, a pooling/MLP head over both feature maps.

Parameter names match the original AWS sample for resnet50 (a plain ``Sequential`` of the
ResNet's children, and a plain ``Sequential`` head), so its ``encoder_weight.pth`` and
``head_weight.pth`` load as they are.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager

import torch
from torch import nn

from .errors import TwinnetError
from .spec import ModelSpec

__all__ = [
    "AdaptiveConcatPool2d",
    "TwinModel",
    "build_encoder",
    "build_head",
    "build_model",
    "PretrainedWeightsError",
]


class PretrainedWeightsError(TwinnetError):
    """ImageNet weights could not be fetched (usually: no internet)."""


class AdaptiveConcatPool2d(nn.Module):
    """Max- and average-pool to ``size`` and concatenate them, max first (fastai's layer)."""

    def __init__(self, size: int = 1) -> None:
        super().__init__()
        self.size = size
        self.ap = nn.AdaptiveAvgPool2d(size)
        self.mp = nn.AdaptiveMaxPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mp(x), self.ap(x)], 1)


@contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def build_encoder(arch: str, pretrained: bool = False) -> nn.Sequential:
    """A torchvision ResNet without its pooling and classifier: ``Sequential(*children()[:-2])``.

    Raises:
        PretrainedWeightsError: ``pretrained`` and the weights are neither cached nor
            downloadable; the message suggests ``--no-pretrained``.
    """
    import torchvision

    ctor = getattr(torchvision.models, arch)
    weights = None
    if pretrained:
        weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
        try:
            with _socket_timeout(20):
                net = ctor(weights=weights)
        except (OSError, RuntimeError, ValueError) as exc:
            raise PretrainedWeightsError(
                f"could not download ImageNet weights for {arch} ({exc.__class__.__name__}: "
                f"{exc}). Connect to the internet, place the file in "
                f"{torch.hub.get_dir()}/checkpoints, or train from scratch with --no-pretrained."
            ) from None
    else:
        net = ctor(weights=None)
    return nn.Sequential(*list(net.children())[:-2])


def build_head(spec: ModelSpec) -> nn.Sequential:
    """The sample's head: concat-pool, flatten, BN, dropout, linear, ReLU, BN, dropout, linear."""
    p1, p2 = spec.dropout
    return nn.Sequential(
        AdaptiveConcatPool2d(1),
        nn.Flatten(),
        nn.BatchNorm1d(spec.head_in),
        nn.Dropout(p1),
        nn.Linear(spec.head_in, spec.head_hidden, bias=False),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(spec.head_hidden),
        nn.Dropout(p2),
        nn.Linear(spec.head_hidden, 2, bias=False),
    )


class TwinModel(nn.Module):
    """Both images through one encoder; feature maps concatenated on channels; head to 2 logits.

    Logit index 0 means "different", index 1 means "same".
    """

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder feature maps of a batch of normalised images."""
        return self.encoder(x)

    def compare_features(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Logits from two batches of feature maps: the head alone."""
        return self.head(torch.cat([left, right], dim=1))

    def forward(self, left: torch.Tensor, right: torch.Tensor | None = None) -> torch.Tensor:
        if right is None:  # fastai passes a tuple batch as one argument in some paths
            left, right = left
        return self.compare_features(self.encode(left), self.encode(right))


def build_model(spec: ModelSpec, pretrained: bool = False) -> TwinModel:
    """The only constructor of a :class:`TwinModel`; ``pretrained`` loads ImageNet encoder weights."""
    return TwinModel(build_encoder(spec.arch, pretrained=pretrained), build_head(spec))
