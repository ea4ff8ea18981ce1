"""Training on generated shapes learns "same class", then evaluate and info through the CLI."""

from __future__ import annotations

import json

import pytest

from twinnet.artifacts import load_model_dir
from twinnet.cli import main
from twinnet.spec import ModelSpec

pytestmark = pytest.mark.integration


def test_training_learns_same_versus_different(trained_model_dir):
    spec = ModelSpec.load(trained_model_dir)
    m = spec.metrics
    assert m["pair_accuracy"] >= 0.85, m
    assert m["pair_auc"] >= 0.9, m
    assert m["valid_accuracy"] == pytest.approx(m["pair_accuracy"])
    assert len(m["history"]) == 4
    # the corrupt file was skipped; all 240 real images counted
    assert sum(spec.classes.values()) == 240 and len(spec.classes) == 6
    assert spec.split["mode"] == "random" and spec.split["seed"] == 0
    assert spec.split["train_images"] + spec.split["valid_images"] == 240
    assert spec.recipe["pretrained"] is False and spec.recipe["lr_lo"] == spec.recipe["lr"]
    assert "fastai" in spec.versions
    model, loaded = load_model_dir(trained_model_dir)
    assert loaded.arch == "resnet18" and loaded.image_size == 32


def test_evaluate_reports_pairs_and_n_way_as_json(trained_model_dir, capsys):
    data = trained_model_dir.parent / "data"
    argv = ["evaluate", str(trained_model_dir), str(data), "--pairs", "400"]
    assert main([*argv, "--way", "4", "--trials", "60", "--json", "--precision", "fp32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] == 400 and report["way"] == 4 and report["trials"] == 60
    assert report["accuracy"] >= 0.85, report
    assert report["auc"] >= 0.9, report
    assert report["way_accuracy"] >= 0.6, report  # chance is 0.25


def test_evaluate_held_out_recovers_the_validation_split(trained_model_dir, capsys):
    data = trained_model_dir.parent / "data"
    argv = ["evaluate", str(trained_model_dir), "--data", str(data), "--held-out", "--json"]
    assert main([*argv, "--pairs", "256", "--precision", "fp32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == ModelSpec.load(trained_model_dir).split["valid_images"]
    assert report["accuracy"] >= 0.8, report


def test_evaluate_defaults_to_the_training_folder(trained_model_dir, capsys):
    argv = ["evaluate", str(trained_model_dir), "--pairs", "64", "--json", "--precision", "fp32"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"] == str((trained_model_dir.parent / "data").resolve())
    assert report["images"] == 240


def test_info_prints_the_recipe_and_metrics(trained_model_dir, capsys):
    assert main(["info", str(trained_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "resnet18 at 32 px" in out
    assert "pair accuracy" in out and "epoch 3" in out
    assert main(["info", str(trained_model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == "resnet18"


def test_training_refuses_a_single_class_before_any_work(tmp_path, capsys):
    from twinnet.datasets import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "one", classes=1, per_class=4, size=16)
    code = main(["train", str(data), "--out", str(tmp_path / "m"), "--no-pretrained"])
    assert code == 2
    assert "at least 2 classes" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
