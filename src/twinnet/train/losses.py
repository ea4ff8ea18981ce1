"""Training objectives: the sample's pair cross-entropy, and metric losses for the cosine head.

The metric losses come from pytorch-metric-learning, composed as it intends (a loss, and a
miner where the loss wants one). A class-proxy loss (CosFace, ArcFace) learns one proxy
vector per training class and pulls each embedding towards its class's proxy with a margin;
a pair loss (multi-similarity, contrastive) learns from the positives and negatives inside
each class-balanced batch. Either way the embedding, not a pair classifier, carries what
"same" means, so it transfers to classes never seen in training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from twinnet.core.metrics import roc_auc
from twinnet.errors import TwinnetError

__all__ = [
    "LOSSES",
    "METRIC_LOSSES",
    "PROXY_LOSSES",
    "default_loss",
    "MetricLoss",
    "build_metric_loss",
    "PairAUC",
]

#: Metric losses for ``--head cosine``; ``pair-ce`` is the concat head's cross-entropy.
METRIC_LOSSES = ("cosface", "normface", "arcface", "multisimilarity", "contrastive")
#: Losses that learn one proxy per training class; they need no class-balanced batches.
PROXY_LOSSES = ("cosface", "normface", "arcface")
LOSSES = ("pair-ce", *METRIC_LOSSES)
#: CosFace/ArcFace logit scale. pytorch-metric-learning's default (64) suits thousands of
#: classes; with tens of classes it saturates the softmax early, and 30 trained better.
PROXY_SCALE = 30.0
COSFACE_MARGIN = 0.35
#: NormFace (Wang et al. 2017): the cosine softmax without a margin, at a lower scale. On
#: Omniglot's unseen alphabets it matched CosFace on pairs and trailed it on 20-way.
NORMFACE_SCALE = 16.0
ARCFACE_MARGIN_DEGREES = 28.6
#: Validation pairs scored per epoch, at most (all pairs of the validation images when fewer).
VALID_PAIRS = 20000


def default_loss(head: str) -> str:
    """The loss a head trains with unless told otherwise."""
    return "cosface" if head == "cosine" else "pair-ce"


def _pml() -> Any:
    try:
        import pytorch_metric_learning  # noqa: F401
    except ImportError:  # pragma: no cover - an install without the extra
        raise TwinnetError(
            "the cosine head's losses need pytorch-metric-learning: "
            "pip install 'twinnet[metric]' (or train --head concat)"
        ) from None
    from pytorch_metric_learning import losses, miners

    return losses, miners


class MetricLoss(nn.Module):
    """A metric loss over ``(embeddings, labels)`` batches, in training and in validation.

    In training, the chosen loss (and its miner) runs on the training classes. Validation
    batches hold classes the proxies never saw, so there the loss is the multi-similarity
    loss, which needs no proxies: a comparable number every epoch, whatever the training loss.

    Args:
        name: one of :data:`METRIC_LOSSES`.
        n_classes: training classes (for proxy losses).
        dim: embedding width.
    """

    def __init__(self, name: str, n_classes: int, dim: int) -> None:
        super().__init__()
        if name not in METRIC_LOSSES:
            raise TwinnetError(
                f"--loss {name!r} does not train a cosine head; choose one of {', '.join(METRIC_LOSSES)}"
            )
        losses, miners = _pml()
        self.name = name
        self.miner = None
        if name == "cosface":
            self.loss = losses.CosFaceLoss(n_classes, dim, margin=COSFACE_MARGIN, scale=PROXY_SCALE)
        elif name == "normface":
            self.loss = losses.CosFaceLoss(n_classes, dim, margin=0.0, scale=NORMFACE_SCALE)
        elif name == "arcface":
            self.loss = losses.ArcFaceLoss(
                n_classes, dim, margin=ARCFACE_MARGIN_DEGREES, scale=PROXY_SCALE
            )
        elif name == "multisimilarity":
            self.loss = losses.MultiSimilarityLoss()
            self.miner = miners.MultiSimilarityMiner()
        else:
            self.loss = losses.ContrastiveLoss()
            self.miner = miners.PairMarginMiner()
        self.valid_loss = losses.MultiSimilarityLoss()

    @property
    def has_proxies(self) -> bool:
        """True when the loss has trainable parameters of its own (class proxies)."""
        return any(True for _ in self.loss.parameters())

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = embeddings.float()
        labels = torch.as_tensor(labels).view(-1).long()
        if not torch.is_grad_enabled():  # fastai validates under no_grad
            return self.valid_loss(embeddings, labels)
        tuples = self.miner(embeddings, labels) if self.miner is not None else None
        return (
            self.loss(embeddings, labels, tuples)
            if tuples is not None
            else self.loss(embeddings, labels)
        )


def build_metric_loss(name: str, n_classes: int, dim: int) -> MetricLoss:
    """The :class:`MetricLoss` named ``name``."""
    return MetricLoss(name, n_classes, dim)


def _pair_auc(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    n = len(labels)
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, k=1)
    if len(i) > VALID_PAIRS:
        keep = np.random.default_rng([seed, 4]).choice(len(i), VALID_PAIRS, replace=False)
        i, j = i[keep], j[keep]
    cos = np.einsum("nd,nd->n", embeddings[i], embeddings[j])
    return roc_auc(labels[i] == labels[j], cos)


def PairAUC():  # noqa: N802 - a fastai metric, named like one
    """A fastai metric: ROC AUC of cosine scores over pairs of the validation images.

    It gathers the epoch's validation embeddings and scores every pair (up to
    :data:`VALID_PAIRS`), so it measures verification on the validation classes directly.
    """
    from fastai.learner import Metric

    class _PairAUC(Metric):
        def reset(self) -> None:
            self.embeddings: list[np.ndarray] = []
            self.labels: list[np.ndarray] = []

        def accumulate(self, learn) -> None:
            self.embeddings.append(learn.pred.detach().float().cpu().numpy())
            self.labels.append(torch.as_tensor(learn.yb[0]).view(-1).cpu().numpy())

        @property
        def value(self) -> float:
            if not self.embeddings:
                return float("nan")
            return _pair_auc(np.concatenate(self.embeddings), np.concatenate(self.labels))

        @property
        def name(self) -> str:
            return "pair_auc"

    return _PairAUC()
