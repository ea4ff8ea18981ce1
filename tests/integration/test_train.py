"""Training on generated shapes learns "same class", then evaluate and info through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twinnet.cli import main
from twinnet.core.artifacts import load_model_dir
from twinnet.core.spec import ModelSpec

pytestmark = pytest.mark.integration


def test_training_learns_same_versus_different(trained_model_dir):
    spec = ModelSpec.load(trained_model_dir)
    m = spec.metrics
    assert m["pair_accuracy"] >= 0.85, m
    assert m["pair_auc"] >= 0.9, m
    assert len(m["history"]) == 4
    # the corrupt file was skipped; all 240 real images counted
    assert sum(spec.classes.values()) == 240 and len(spec.classes) == 6
    assert spec.split["mode"] == "random" and spec.split["seed"] == 0
    assert spec.recipe["pretrained"] is False and spec.recipe["lr_lo"] == spec.recipe["lr"]
    assert "fastai" in spec.versions
    if spec.head == "concat":
        assert m["valid_accuracy"] == pytest.approx(m["pair_accuracy"])
        assert spec.split["train_images"] + spec.split["valid_images"] == 240
        assert spec.recipe["loss"] == "pair-ce" and not spec.calibration
    else:
        # a random split still calibrates on whole classes held out of training
        held = spec.split["calibration_classes"]
        assert len(held) == 2 and not set(held) & set(spec.split["train_classes"])
        assert spec.split["train_images"] + spec.split["valid_images"] == 240 - 80
        assert spec.recipe["loss"] == "cosface"
        assert spec.calibration["method"] == "held-out calibration classes"
        assert spec.threshold == spec.calibration["threshold"]
    model, loaded = load_model_dir(trained_model_dir)
    assert loaded.arch == "resnet18" and loaded.image_size == 32 and loaded.head == spec.head


def test_a_timm_backbone_trains_records_its_data_config_and_explains(timm_model_dir, shapes_dir):
    from twinnet.core.backbones import describe
    from twinnet.infer.twin import Twin

    spec = ModelSpec.load(timm_model_dir)
    assert spec.metrics["pair_auc"] >= 0.75, spec.metrics  # one epoch, well above chance
    info = describe(spec.arch)  # timm's data config, recorded so every stage resizes alike
    assert spec.interpolation == info["interpolation"] == "bicubic"
    assert list(spec.mean) == info["mean"] and list(spec.std) == info["std"]
    assert spec.backbone["channels"] == 512 and spec.backbone["reduction"] == 32
    twin = Twin.load(timm_model_dir, precision="fp32")
    assert type(twin.model.encoder).__module__.startswith("timm.")
    left, right = sorted((shapes_dir / "circle_0").iterdir())[:2]
    result = twin.compare(left, right, cam=True)
    assert result.cam_left.shape == result.cam_right.shape == (2, 2)  # 64 px / 32
    assert np.isfinite(result.cam_left).all() and np.ptp(result.cam_left) > 0


@pytest.fixture(scope="module")
def unseen_model(tmp_path_factory):
    """A cosine model trained on 7 of 10 shape classes; its other 3 calibrate and test it."""
    from twinnet.data.datasets import make_shapes_dataset

    base = tmp_path_factory.mktemp("unseen")
    data = make_shapes_dataset(base / "data", classes=10, per_class=24, size=32)
    out = base / "model"
    argv = ["train", str(data), "--out", str(out), "--split", "classes", "--valid-pct", "0.3"]
    recipe = ["--arch", "resnet18", "--size", "32", "--no-pretrained", "--frozen-epochs", "0",
              "--epochs", "4", "--lr", "3e-3", "--bs", "32", "--epoch-pairs", "1024"]  # fmt: skip
    assert main([*argv, *recipe, "--head", "cosine", "--workers", "0"]) == 0
    return out, data


def test_cosine_model_verifies_classes_it_never_saw(unseen_model, capsys):
    out, data = unseen_model
    spec = ModelSpec.load(out)
    assert spec.head == "cosine" and len(spec.split["valid_classes"]) == 3
    assert spec.calibration["method"] == "held-out classes (validation split)"
    assert spec.calibration["pairs"] > 1000 and 0 < spec.threshold < 1
    argv = ["evaluate", str(out), str(data), "--held-out", "--pairs", "1000", "--way", "3"]
    assert main([*argv, "--trials", "200", "--json", "--precision", "fp32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == 3
    assert report["accuracy"] >= 0.8, report  # chance 0.5, at the threshold fixed in training
    assert report["auc"] >= 0.9, report
    assert report["way_accuracy"] >= 0.6, report  # chance 1/3
    # the verification keys, with values consistent with one another
    assert set(report["tar_at_far"]) == {"0.01", "0.001"}
    assert 0.0 <= report["tar_at_far"]["0.001"] <= report["tar_at_far"]["0.01"] <= 1.0
    assert 0.0 <= report["eer"] <= 0.5 and report["eer"] <= 1 - report["auc"] + 0.25
    assert 0.0 <= report["kfold_std"] < 0.2
    assert abs(report["kfold_accuracy"] - report["accuracy"]) < 0.15
    assert report["kfold_accuracy"] >= 1 - report["eer"] - 0.05  # the best threshold beats EER's


def test_training_compares_the_layer_its_held_out_classes_separate_best(unseen_model, capsys):
    import dataclasses

    from twinnet.core.metrics import roc_auc
    from twinnet.data.items import scan_folder
    from twinnet.evaluate.calibrate import calibration_scores
    from twinnet.infer.twin import Twin

    out, data = unseen_model
    model, spec = load_model_dir(out)
    record = spec.metrics["readout"]
    scores = record["scores"]
    best = "pooled" if scores["pooled"] >= scores["projection"] else "projection"
    assert spec.readout == record["kept"] == best == model.head.readout
    # the recorded scores are the held-out classes' pair AUC of each layer, recomputed here
    items = scan_folder(data)
    held = {items.classes.index(c) for c in spec.split["valid_classes"]}
    calib = items.subset(np.flatnonzero(np.isin(items.labels, sorted(held))))
    for readout, score in scores.items():
        model.head.readout = readout
        twin = Twin.from_model(model, dataclasses.replace(spec, readout=readout), cache_mb=0)
        cos, same = calibration_scores(twin, calib, seed=spec.split["seed"])
        assert roc_auc(same, cos) == pytest.approx(score, abs=2e-3), readout
    emb = Twin.load(out).embed([str(f) for f in items.files[:2]])
    assert emb.shape == (2, spec.embedding_width)
    assert main(["info", str(out)]) == 0
    assert f"readout    {spec.readout} (held-out pair AUC: " in capsys.readouterr().out


def test_calibrate_refits_the_threshold_and_evaluate_uses_it(unseen_model, tmp_path, capsys):
    import shutil

    out, data = unseen_model
    model = tmp_path / "model"
    shutil.copytree(out, model)
    held = tmp_path / "held"
    for name in ModelSpec.load(out).split["valid_classes"]:
        shutil.copytree(data / name, held / name)
    weights = (model / "encoder.safetensors").read_bytes()
    assert (
        main(["calibrate", str(model), str(held), "--target", "far=0.01", "--pairs", "4000"]) == 0
    )
    text = capsys.readouterr().out
    assert "before" in text and "after" in text and "far=0.01" in text
    after = next(line.split() for line in text.splitlines() if line.startswith("after"))
    threshold, accuracy, far, frr = map(float, after[1:5])
    assert far <= 0.01  # the target, on the pairs it was fitted on
    assert accuracy == pytest.approx(1 - (far + frr) / 2, abs=1e-3)  # balanced pairs
    spec = ModelSpec.load(model)
    assert spec.calibration["target"] == "far=0.01" and spec.calibration["pairs"] == 4000
    assert spec.threshold == spec.calibration["threshold"]
    assert (model / "encoder.safetensors").read_bytes() == weights  # no retraining
    assert not list(model.glob(".twinnet-*"))  # the atomic write left no temporary file
    argv = ["evaluate", str(model), str(held), "--pairs", "1000", "--json", "--precision", "fp32"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threshold"] == pytest.approx(spec.threshold)
    # on fresh pairs of the same classes: few false accepts, so accuracy sits above chance by
    # about half the true accept rate
    assert report["accuracy"] >= 0.55, report


def test_calibrate_refuses_a_concat_model(shapes_dir, tmp_path, capsys):
    from twinnet.core.artifacts import save_model_dir
    from twinnet.core.model import build_model

    spec = ModelSpec(arch="resnet18", image_size=32, head="concat")
    save_model_dir(build_model(spec).eval(), spec, tmp_path / "concat")
    assert main(["calibrate", str(tmp_path / "concat"), str(shapes_dir)]) == 2
    assert "--head cosine" in capsys.readouterr().err


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
    from twinnet.data.datasets import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "one", classes=1, per_class=4, size=16)
    code = main(["train", str(data), "--out", str(tmp_path / "m"), "--no-pretrained"])
    assert code == 2
    assert "at least 2 classes" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_init_and_encoder_weights_start_from_an_earlier_model(unseen_model, tmp_path, capsys):
    """`--init` fine-tunes an earlier model (at its own low rate for every layer group) and
    records where it started; `--encoder-weights` starts from a weights file instead (ImageNet's
    discriminative rates). Either way the run is far above chance after two short epochs."""
    from twinnet.core.weights import file_digest
    from twinnet.train.config import PRETRAINED_LR_RANGE, RECIPE_DEFAULTS

    source, data = unseen_model
    short = ["--split", "classes", "--valid-pct", "0.3", "--epoch-pairs", "512", "--workers", "0",
             "--frozen-epochs", "1", "--epochs", "1", "--bs", "32"]  # fmt: skip
    out = tmp_path / "finetuned"
    assert main(["train", str(data), "--out", str(out), "--init", str(source), *short]) == 0
    said = capsys.readouterr().out
    assert "head taken" in said and "kept: " in said
    spec = ModelSpec.load(out)
    # It ends half-way between the start and the last epoch, or on the start when the
    # held-out classes score the start higher.
    kept = spec.recipe["kept"]
    assert len(kept["scores"]) == 3  # the start, the frozen epoch, the unfrozen one
    mixed = kept["mix"] >= kept["scores"][0]
    assert kept["kept"] == ("mix 0.5 of start and epoch 2" if mixed else "start")
    assert kept["gain"] == pytest.approx(max(kept["mix"] - kept["scores"][0], 0.0), abs=2e-6)
    start = spec.recipe["start"]
    assert start["init"] == str(source.resolve()) and start["head_taken"] is True
    assert start["blake2b"] == file_digest(
        source / "encoder.safetensors", source / "head.safetensors"
    )
    assert (spec.arch, spec.image_size) == ("resnet18", 32)  # taken from the source model
    init_lr = RECIPE_DEFAULTS["init"][2]
    assert (spec.recipe["lr"], spec.recipe["lr_lo"], spec.recipe["lr_hi"]) == (init_lr,) * 3
    assert spec.metrics["pair_auc"] >= 0.85, spec.metrics  # chance 0.5
    assert main(["info", str(out)]) == 0
    assert f"start      {source.resolve()}" in capsys.readouterr().out

    weights = tmp_path / "weights"
    argv = ["train", str(data), "--out", str(weights), "--arch", "resnet18", "--size", "32"]
    encoder = source / "encoder.safetensors"
    assert main([*argv, "--encoder-weights", str(encoder), *short]) == 0
    spec = ModelSpec.load(weights)
    assert spec.recipe["start"]["blake2b"] == file_digest(encoder)
    assert spec.recipe["pretrained"] is False and spec.metrics["pair_auc"] >= 0.75, spec.metrics
    assert (spec.recipe["lr_lo"], spec.recipe["lr_hi"]) == PRETRAINED_LR_RANGE
