"""A cosine model compares its pooled features or its trained projection: the spec's ``readout``,
chosen in training by the held-out classes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from twinnet.core.artifacts import load_model_dir
from twinnet.core.metrics import roc_auc
from twinnet.core.model import CosineHead, build_model
from twinnet.core.spec import ModelSpec, SpecError
from twinnet.data.items import scan_folder
from twinnet.evaluate.calibrate import calibration_scores
from twinnet.infer.twin import Twin
from twinnet.train import readout as readout_module
from twinnet.train.fastai_parts import EmbeddingNet
from twinnet.train.readout import choose_readout, pick_readout

pytestmark = pytest.mark.unit


def _head(readout: str) -> CosineHead:
    torch.manual_seed(0)
    head = CosineHead(8, 4, readout=readout).eval()
    with torch.no_grad():  # training statistics that are not the identity
        norm = head.embedding[2]
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 1.5)
    return head


def test_the_pooled_readout_is_the_batch_normalised_pooled_features_before_the_projection():
    x = torch.randn(5, 8, 3, 3)
    head = _head("pooled")
    norm = head.embedding[2]
    pooled = torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)
    expected = torch.nn.functional.normalize(norm(pooled), dim=1)
    out = head.embed(x)
    assert out.shape == (5, 16)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    # the projection is what trains, whichever readout compares
    assert head.project(x).shape == (5, 4)
    torch.testing.assert_close(_head("projection").embed(x), head.project(x))


def test_the_loss_sees_the_projection_whatever_the_readout(random_cosine_dir):
    model, spec = load_model_dir(random_cosine_dir)
    model.head.readout = "pooled"
    x = torch.randn(2, 3, spec.image_size, spec.image_size)
    with torch.no_grad():
        out = EmbeddingNet(model).eval()(x)
        assert out.shape == (2, spec.embedding_dim)
        pooled = dataclasses.replace(spec, readout="pooled")
        assert model.embed(x).shape == (2, pooled.embedding_width) == (2, 1024)


def test_the_spec_records_a_pooled_readout_and_leaves_the_default_out():
    spec = ModelSpec(arch="resnet18", image_size=32, head="cosine", embedding_dim=64)
    assert spec.readout == "projection" and spec.embedding_width == 64
    assert "readout" not in spec.to_dict()  # earlier releases still read it
    pooled = dataclasses.replace(spec, readout="pooled")
    assert pooled.embedding_width == 1024  # resnet18: 512 channels, max- and average-pooled
    assert ModelSpec.from_dict(pooled.to_dict()).readout == "pooled"
    with torch.no_grad():
        assert build_model(pooled).eval().embed(torch.randn(1, 3, 32, 32)).shape == (1, 1024)
    with pytest.raises(SpecError, match="unknown readout 'middle'"):
        dataclasses.replace(spec, readout="middle")


def test_each_readout_has_its_own_fingerprint_and_the_projection_keeps_the_old_one(
    random_cosine_dir,
):
    model, spec = load_model_dir(random_cosine_dir)
    before = Twin.from_model(model, spec, precision="fp32", cache_mb=0).fingerprint
    spec_dict = spec.to_dict()
    assert "readout" not in spec_dict
    pooled = Twin.from_model(
        model, dataclasses.replace(spec, readout="pooled"), precision="fp32", cache_mb=0
    )
    assert pooled.fingerprint != before


def test_one_encoder_pass_scores_each_readout_as_a_twin_of_that_readout_would(
    random_cosine_dir, shapes_dir
):
    model, spec = load_model_dir(random_cosine_dir)
    items = scan_folder(shapes_dir)
    cosines = readout_module.readout_cosines(model, spec, items, seed=0)
    assert set(cosines) == {"projection", "pooled"} and model.head.readout == "projection"
    for readout, (cos, same) in cosines.items():
        model.head.readout = readout
        twin = Twin.from_model(model, dataclasses.replace(spec, readout=readout), cache_mb=0)
        want_cos, want_same = calibration_scores(twin, items, seed=0)
        np.testing.assert_array_equal(same, want_same)
        np.testing.assert_allclose(cos, want_cos, atol=1e-5)
    model.head.readout = "projection"
    assert not np.allclose(cosines["pooled"][0], cosines["projection"][0], atol=1e-3)


def test_choose_readout_sets_the_one_the_held_out_classes_score_higher(
    random_cosine_dir, shapes_dir
):
    model, spec = load_model_dir(random_cosine_dir)
    items = scan_folder(shapes_dir)
    cosines = readout_module.readout_cosines(model, spec, items, seed=0)
    scores = {r: roc_auc(same, cos) for r, (cos, same) in cosines.items()}
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    choice = choose_readout(model, spec, items, seed=0)
    best = max(scores, key=lambda k: (scores[k], k == "pooled"))
    assert choice.readout == best == model.head.readout
    assert choice.record == {
        "kept": best,
        "metric": "pair_auc on the calibration classes",
        "scores": {k: round(v, 6) for k, v in scores.items()},
    }
    # calibration gets the kept layer's cosines, with no second pass over the images
    np.testing.assert_array_equal(choice.cosines, cosines[best][0])
    np.testing.assert_array_equal(choice.same, cosines[best][1])


@pytest.mark.parametrize(
    ("scores", "kept"),
    [
        ({"projection": 0.90, "pooled": 0.91}, "pooled"),
        ({"projection": 0.92, "pooled": 0.91}, "projection"),
        ({"projection": 0.91, "pooled": 0.91}, "pooled"),  # ties: the pooled features
    ],
)
def test_the_higher_score_wins_and_ties_go_to_the_pooled_features(scores, kept):
    assert pick_readout(scores) == kept
