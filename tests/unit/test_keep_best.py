"""``--init`` runs end half-way between the start and the last epoch, or on the start when the
held-out classes score it higher; every epoch is scored for the record."""

from __future__ import annotations

import pytest
import torch

from twinnet.core.artifacts import load_model_dir
from twinnet.data.items import scan_folder
from twinnet.train.keep import MIX, StartOrMix, mix_states


def _keeper(model_dir, shapes_dir, scores, monkeypatch) -> tuple[StartOrMix, torch.nn.Module]:
    model, spec = load_model_dir(model_dir)
    queue = list(scores)
    monkeypatch.setattr(StartOrMix, "score", lambda self: queue.pop(0))
    return StartOrMix(model, spec, scan_folder(shapes_dir), seed=0), model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _epoch(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Change every weight, as an epoch would; the state after it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return _state(model)


def test_mix_states_interpolates_floats_and_keeps_counters():
    start = {"w": torch.zeros(3), "n": torch.tensor(1)}
    end = {"w": torch.full((3,), 4.0), "n": torch.tensor(9)}
    mixed = mix_states(start, end, 0.25)
    assert torch.equal(mixed["w"], torch.ones(3)) and int(mixed["n"]) == 9


def test_the_half_way_mixture_is_kept_even_when_an_epoch_scores_higher(
    random_cosine_dir, shapes_dir, monkeypatch
):
    # held-out classes favour the most fitted weights, so epochs do not compete (module doc)
    keeper, model = _keeper(random_cosine_dir, shapes_dir, [0.60, 0.70, 0.75, 0.66], monkeypatch)
    start = _state(model)
    _epoch(model, 1)
    keeper.observe()
    last = _epoch(model, 2)
    keeper.observe()
    record = keeper.restore()
    assert record == {
        "kept": "mix 0.5 of start and epoch 2",
        "metric": "pair_auc on the calibration classes",
        "scores": [0.6, 0.7, 0.75],
        "mix": 0.66,
        "gain": pytest.approx(0.06),
    }
    half = mix_states(start, last, MIX)
    key = next(k for k, v in start.items() if v.is_floating_point() and v.numel() > 1)
    assert torch.allclose(half[key], (start[key] + last[key]) / 2)
    assert not torch.equal(half[key], start[key]) and not torch.equal(half[key], last[key])
    for k, v in model.state_dict().items():
        assert torch.equal(v, half[k]), k


def test_the_start_is_kept_when_it_beats_the_mixture(random_cosine_dir, shapes_dir, monkeypatch):
    keeper, model = _keeper(random_cosine_dir, shapes_dir, [0.80, 0.90, 0.79], monkeypatch)
    start = _state(model)
    _epoch(model, 1)
    keeper.observe()
    record = keeper.restore()
    assert record["kept"] == "start" and record["gain"] == 0.0 and record["mix"] == 0.79
    for k, v in model.state_dict().items():
        assert torch.equal(v, start[k]), k


def test_no_mixture_without_an_epoch(random_cosine_dir, shapes_dir, monkeypatch):
    keeper, _ = _keeper(random_cosine_dir, shapes_dir, [0.60], monkeypatch)
    record = keeper.restore()
    assert record["kept"] == "start" and record["mix"] is None and record["scores"] == [0.6]


def test_the_score_is_a_pair_auc_on_the_held_out_images_and_leaves_training_mode(
    random_cosine_dir, shapes_dir
):
    model, spec = load_model_dir(random_cosine_dir)
    model.train()
    keeper = StartOrMix(model, spec, scan_folder(shapes_dir), seed=0)
    assert model.training  # scored in eval mode, handed back as it was
    assert 0.0 <= keeper.scores[0] <= 1.0 and keeper.score() == pytest.approx(keeper.scores[0])
