"""``--init`` runs end on the weights that score best on held-out classes, the start included."""

from __future__ import annotations

import pytest
import torch

from twinnet.core.artifacts import load_model_dir
from twinnet.data.items import scan_folder
from twinnet.train.keep import BestOnHeldOut


def _keeper(model_dir, shapes_dir, scores, monkeypatch) -> tuple[BestOnHeldOut, torch.nn.Module]:
    model, spec = load_model_dir(model_dir)
    queue = list(scores)
    monkeypatch.setattr(BestOnHeldOut, "score", lambda self: queue.pop(0))
    return BestOnHeldOut(model, spec, scan_folder(shapes_dir), seed=0), model


def _epoch(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Change every weight, as an epoch would; the state after it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_start_is_kept_when_no_epoch_beats_it(random_cosine_dir, shapes_dir, monkeypatch):
    keeper, model = _keeper(random_cosine_dir, shapes_dir, [0.80, 0.70, 0.79], monkeypatch)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for seed in (1, 2):
        _epoch(model, seed)
        keeper.observe()
    record = keeper.restore()
    assert record["kept"] == "start" and record["scores"] == [0.8, 0.7, 0.79]
    assert record["gain"] == 0.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, start[k]), k


def test_the_best_epoch_is_kept_when_it_beats_the_start(random_cosine_dir, shapes_dir, monkeypatch):
    keeper, model = _keeper(random_cosine_dir, shapes_dir, [0.60, 0.70, 0.65], monkeypatch)
    first = _epoch(model, 1)
    keeper.observe()
    _epoch(model, 2)
    keeper.observe()
    record = keeper.restore()
    assert record["kept"] == "epoch 1" and record["gain"] == pytest.approx(0.1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, first[k]), k


def test_the_score_is_a_pair_auc_on_the_held_out_images_and_leaves_training_mode(
    random_cosine_dir, shapes_dir
):
    model, spec = load_model_dir(random_cosine_dir)
    model.train()
    keeper = BestOnHeldOut(model, spec, scan_folder(shapes_dir), seed=0)
    assert model.training  # scored in eval mode, handed back as it was
    assert 0.0 <= keeper.scores[0] <= 1.0 and keeper.score() == pytest.approx(keeper.scores[0])
