"""A run from an earlier model (``--init``) ends on its best weights for new classes.

Fine-tuning a metric space learnt on many classes with a few new ones can leave it worse on
classes neither set holds: on Omniglot's unseen alphabets and on unseen digits, an Omniglot
encoder fine-tuned on 69 characters or 7 digits lost AUC against the same encoder as it
started (docs/training.md). So the run scores the starting weights and every epoch's on the
calibration classes, which never train (pair ROC AUC of cosine scores, the same seeded pairs
each time), and ends on the best: the start's when no epoch beats it. The choice and the
scores go into the spec's recipe.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from twinnet.core.metrics import roc_auc
from twinnet.core.spec import ModelSpec
from twinnet.evaluate.calibrate import calibration_scores

__all__ = ["BestOnHeldOut"]


class BestOnHeldOut:
    """Scores a cosine model on held-out classes, keeps the best weights, and restores them.

    Args:
        model: the model being trained (its weights are read, and restored by :meth:`restore`).
        spec: its spec (preprocessing, head).
        items: labelled images of classes that do not train (at least two classes).
        seed: seeds the pairs, the same for every score.
    """

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, items: Any, seed: int) -> None:
        self.model, self.spec, self.items, self.seed = model, spec, items, seed
        self.scores: list[float] = []
        self.best_index = 0
        self.best_state: dict[str, torch.Tensor] = {}
        self.observe()  # the start

    def score(self) -> float:
        """Pair ROC AUC of the model's cosine scores on the held-out classes, now."""
        from twinnet.infer.twin import Twin

        training = self.model.training
        device = next(self.model.parameters()).device.type  # scored where it trains
        try:
            twin = Twin.from_model(self.model, self.spec, device, precision="fp32", cache_mb=0)
            cos, same = calibration_scores(twin, self.items, seed=self.seed)
            return float(roc_auc(same, cos))
        finally:
            self.model.train(training)

    def observe(self) -> None:
        """Score the current weights; keep a copy when they are the best so far."""
        value = self.score()
        self.scores.append(value)
        if len(self.scores) == 1 or value > self.scores[self.best_index]:
            self.best_index = len(self.scores) - 1
            self.best_state = copy.deepcopy(self.model.state_dict())

    def callback(self) -> Any:
        """A fastai callback that observes after every epoch."""
        from fastai.callback.core import Callback

        keeper = self

        class KeepBest(Callback):
            order = 70  # after the recorder has logged the epoch

            def after_epoch(self) -> None:
                keeper.observe()

        return KeepBest()

    def restore(self) -> dict[str, Any]:
        """Load the best weights into the model; what the spec records of the choice."""
        self.model.load_state_dict(self.best_state)
        kept = "start" if self.best_index == 0 else f"epoch {self.best_index}"
        start, best = self.scores[0], self.scores[self.best_index]
        print(
            f"kept: {'the starting weights' if self.best_index == 0 else kept} (pair AUC "
            f"{best:.4f} on {len(self.items.classes)} held-out classes; start {start:.4f}, "
            f"epochs {', '.join(f'{s:.4f}' for s in self.scores[1:]) or 'none'})"
        )
        return {
            "kept": kept,
            "metric": "pair_auc on the calibration classes",
            "scores": [round(s, 6) for s in self.scores],
            "gain": round(best - start, 6),
        }
