"""The twin network: one shared encoder (:mod:`twinnet.core.backbones`) and one of two heads.

- ``concat`` (the original sample's): a pooling/MLP classifier over both feature maps
  concatenated. Parameter names match the sample for resnet50 (a plain ``Sequential`` of the
  ResNet's children, and a plain ``Sequential`` head), so its ``encoder_weight.pth`` and
  ``head_weight.pth`` load as they are.
- ``cosine``: each image's feature map is pooled and projected to an L2-normalised
  embedding; a pair's score is the cosine of its two embeddings, which a calibrated affine
  map turns into the same two logits. A metric space is what carries over to classes the
  network never saw; a pair classifier can memorise its training classes instead.

Both heads take ``cat([left, right], dim=1)`` of two feature maps and return logits
``[different, same]``, so Grad-CAM, the inference library and the servers treat them alike.
"""

from __future__ import annotations

import torch
from torch import nn

from twinnet.core.backbones import PretrainedWeightsError, build_encoder
from twinnet.core.calibration import DEFAULT_CALIBRATION
from twinnet.core.spec import ModelSpec
from twinnet.errors import TwinnetError

__all__ = [
    "AdaptiveConcatPool2d",
    "CosineHead",
    "TwinModel",
    "build_encoder",
    "build_head",
    "build_model",
    "PretrainedWeightsError",
    "DEFAULT_CALIBRATION",
]


class AdaptiveConcatPool2d(nn.Module):
    """Max- and average-pool to ``size`` and concatenate them, max first (fastai's layer)."""

    def __init__(self, size: int = 1) -> None:
        super().__init__()
        self.size = size
        self.ap = nn.AdaptiveAvgPool2d(size)
        self.mp = nn.AdaptiveMaxPool2d(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size == 1:  # the heads' case: plain reductions, a third of the pools' time
            return torch.cat([x.amax((2, 3), keepdim=True), x.mean((2, 3), keepdim=True)], 1)
        return torch.cat([self.mp(x), self.ap(x)], 1)


def build_head(spec: ModelSpec) -> nn.Module:
    """The head the spec names: :func:`concat_head` or a :class:`CosineHead`."""
    if spec.head == "cosine":
        cal = spec.calibration or DEFAULT_CALIBRATION
        return CosineHead(
            spec.feature_channels,
            spec.embedding_dim,
            dropout=spec.dropout[0],
            scale=float(cal["scale"]),
            bias=float(cal["bias"]),
            readout=spec.readout,
        )
    return concat_head(spec)


def concat_head(spec: ModelSpec) -> nn.Sequential:
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


class CosineHead(nn.Module):
    """One image's feature map to a unit-norm embedding; two embeddings to calibrated logits.

    ``forward`` takes two feature maps concatenated on channels (as the concat head does) and
    returns ``[-z/2, z/2]`` with ``z = scale * cos + bias``, so ``softmax(logits)[1]`` is
    ``sigmoid(z)``. ``scale`` and ``bias`` are buffers outside the state dict: they come from
    the spec's calibration, which ``twinnet calibrate`` can re-fit without touching weights.

    Args:
        channels: channels of one image's feature map.
        dim: embedding width.
        dropout: dropout before the projection (training only).
        scale: slope of the cosine-to-logit map.
        bias: offset of the cosine-to-logit map.
        readout: what :meth:`embed` returns: ``projection`` (the embedding the loss trains,
            :meth:`project`) or ``pooled`` (the batch-normalised pooled features before it).
            On classes never trained on, the pooled features separated better in every
            model measured (docs/training.md): the projection fits the training classes.
    """

    def __init__(
        self,
        channels: int,
        dim: int,
        dropout: float = 0.05,
        scale: float = 10.0,
        bias: float = -5.0,
        readout: str = "projection",
    ) -> None:
        super().__init__()
        self.channels = channels
        self.readout = readout
        self.embedding = nn.Sequential(
            AdaptiveConcatPool2d(1),
            nn.Flatten(),
            nn.BatchNorm1d(2 * channels),
            nn.Dropout(dropout),
            nn.Linear(2 * channels, dim, bias=False),
            nn.BatchNorm1d(dim),
        )
        self.register_buffer("scale", torch.tensor(float(scale)), persistent=False)
        self.register_buffer("bias", torch.tensor(float(bias)), persistent=False)

    def set_calibration(self, scale: float, bias: float) -> None:
        """Replace the cosine-to-logit map (after calibration)."""
        self.scale.fill_(float(scale))
        self.bias.fill_(float(bias))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Unit-norm projections (N, dim) of a batch of one-image feature maps: what trains."""
        return nn.functional.normalize(self.embedding(features).float(), dim=1)

    def pooled(self, features: torch.Tensor) -> torch.Tensor:
        """Unit-norm pooled features (N, 2 * channels), batch-normalised, before the projection."""
        pool, flatten, norm = self.embedding[:3]
        return nn.functional.normalize(norm(flatten(pool(features))).float(), dim=1)

    def read(self, features: torch.Tensor, readout: str) -> torch.Tensor:
        """Unit-norm embeddings of a batch of one-image feature maps at the layer ``readout``
        names, whatever :attr:`readout` is (training scores both from one encoder pass)."""
        return self.pooled(features) if readout == "pooled" else self.project(features)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings of a batch of one-image feature maps, as :attr:`readout` says."""
        return self.read(features, self.readout)

    def logits(self, cosine: torch.Tensor) -> torch.Tensor:
        """Logits ``[different, same]`` (N, 2) of a batch of cosine similarities."""
        z = self.scale * cosine + self.bias
        return torch.stack([-z / 2, z / 2], dim=1)

    def forward(self, pair_features: torch.Tensor) -> torch.Tensor:
        left, right = pair_features.split(self.channels, dim=1)
        cosine = (self.embed(left) * self.embed(right)).sum(dim=1)
        return self.logits(cosine)


class TwinModel(nn.Module):
    """Both images through one encoder, then the head to 2 logits.

    Logit index 0 means "different", index 1 means "same".
    """

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    @property
    def has_embeddings(self) -> bool:
        """True when the head maps each image alone to an embedding."""
        return isinstance(self.head, CosineHead)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder feature maps of a batch of normalised images."""
        return self.encoder(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings (N, dim) of a batch of normalised images (cosine head only)."""
        if not self.has_embeddings:
            raise TwinnetError(
                "this model's head (concat) scores pairs and has no per-image embedding; "
                "train one with --head cosine"
            )
        return self.head.embed(self.encoder(x))

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
