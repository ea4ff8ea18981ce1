"""A run from an earlier model (``--init``) ends half-way between its start and its last epoch.

Fine-tuning a metric space learnt on many classes with a few new ones can leave it worse on
classes neither set holds: on Omniglot's unseen alphabets and on unseen digits, an Omniglot
encoder fine-tuned on 69 characters or 7 digits lost AUC against the same encoder as it
started (docs/training.md). Averaging the fine-tuned weights with the starting ones keeps
what the start knew (WiSE-FT, Wortsman et al., CVPR 2022): on unseen digits the half-way
mixture beat both ends on AUC in six runs of six, and on Omniglot it lost half of what the
last epoch lost. The run's own held-out classes cannot choose how far to go: they come from
the small set, and scored the last epoch highest where unseen classes lost most. So they
only decide between the start and the half-way mixture (pair ROC AUC of cosine scores on
the calibration classes, which never train; the same seeded pairs each time). Every epoch
is scored too, for the record in the spec's recipe.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from twinnet.core.metrics import roc_auc
from twinnet.core.spec import ModelSpec
from twinnet.evaluate.calibrate import calibration_scores

__all__ = ["MIX", "StartOrMix", "mix_states"]

#: The last epoch's share of the weights a run ends on (the rest: the start's).
MIX = 0.5


def mix_states(
    start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], weight: float
) -> dict[str, torch.Tensor]:
    """``(1 - weight) * start + weight * end`` for float tensors; counters keep ``end``'s."""
    return {
        k: torch.lerp(start[k], v, weight) if v.is_floating_point() else v.clone()
        for k, v in end.items()
    }


class StartOrMix:
    """Scores a cosine model on held-out classes as it trains, and ends it on the half-way
    mixture of start and last epoch, or on the start if that scores higher (ties: the mixture).

    Args:
        model: the model being trained (its weights are read, and set by :meth:`restore`).
        spec: its spec (preprocessing, head).
        items: labelled images of classes that do not train (at least two classes).
        seed: seeds the pairs, the same for every score.
    """

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, items: Any, seed: int) -> None:
        self.model, self.spec, self.items, self.seed = model, spec, items, seed
        self.start_state = copy.deepcopy(model.state_dict())
        self.scores: list[float] = [self.score()]  # the start, then each epoch
        self.mix_score: float | None = None

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
        """Score the weights after an epoch (for the record)."""
        self.scores.append(self.score())

    def callback(self) -> Any:
        """A fastai callback that observes after every epoch."""
        from fastai.callback.core import Callback

        keeper = self

        class ScoreEpoch(Callback):
            order = 70  # after the recorder has logged the epoch

            def after_epoch(self) -> None:
                keeper.observe()

        return ScoreEpoch()

    def restore(self) -> dict[str, Any]:
        """Load the half-way mixture, or the start if it scores higher; what the spec records."""
        start, last = self.scores[0], len(self.scores) - 1
        kept, best = "start", start
        if last >= 1:
            with torch.no_grad():
                self.model.load_state_dict(
                    mix_states(self.start_state, self.model.state_dict(), MIX)
                )
            self.mix_score = self.score()
            if self.mix_score >= start:
                kept, best = f"mix {MIX:g} of start and epoch {last}", self.mix_score
        if kept == "start":
            self.model.load_state_dict(self.start_state)
        said = "the starting weights" if kept == "start" else (
            f"the starting weights mixed with epoch {last}'s ({MIX:g} of them)"
        )  # fmt: skip
        epochs = ", ".join(f"{s:.4f}" for s in self.scores[1:]) or "none"
        mixed = "" if self.mix_score is None else f"; the mixture {self.mix_score:.4f}"
        print(
            f"kept: {said} (pair AUC {best:.4f} on {len(self.items.classes)} held-out classes; "
            f"start {start:.4f}, epochs {epochs}{mixed})"
        )
        return {
            "kept": kept,
            "metric": "pair_auc on the calibration classes",
            "scores": [round(s, 6) for s in self.scores],
            "mix": None if self.mix_score is None else round(self.mix_score, 6),
            "gain": round(best - start, 6),
        }
