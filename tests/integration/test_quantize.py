"""``twinnet quantize``: an int8 encoder checked against fp32, refused when it disagrees, and
used by ``Twin.load`` only while it matches the weights it was made from."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from twinnet.cli import main
from twinnet.core.spec import ModelSpec
from twinnet.data.items import draw_pairs, scan_folder
from twinnet.errors import TwinnetError
from twinnet.infer.int8 import ENGINE_ENV, ENGINES, INT8_FILE, installed_engines
from twinnet.infer.quantize import quantize_model
from twinnet.infer.runtime import cpu_has_int8_dot, cpu_has_native_bf16
from twinnet.infer.twin import Twin

pytestmark = pytest.mark.integration


@pytest.fixture
def quantized_copy(trained_model_dir, tmp_path, capsys) -> Path:
    """A copy of the trained model (each head), quantized through the CLI on its own data."""
    model = tmp_path / "model"
    shutil.copytree(trained_model_dir, model)
    data = trained_model_dir.parent / "data"  # holds one corrupt file
    assert main(["quantize", str(model), str(data)]) == 0
    said = capsys.readouterr().err
    assert "calibrating on 120 images" in said and f"wrote {model / INT8_FILE}" in said
    return model


def test_int8_agrees_with_fp32_on_held_out_pairs_and_is_what_auto_loads(
    quantized_copy, trained_model_dir
):
    record = ModelSpec.load(quantized_copy).quantization
    assert record["file"] == INT8_FILE and (quantized_copy / INT8_FILE).is_file()
    assert record["agreement"]["balanced_by_class"] is True
    assert record["agreement"]["changed_decisions"] <= 0.01 * record["agreement"]["pairs"]
    int8 = Twin.load(quantized_copy, precision="int8")
    fp32 = Twin.load(quantized_copy, precision="fp32")
    assert int8.precision == "int8" and "precision=int8" in repr(int8)
    if cpu_has_int8_dot():
        assert Twin.load(quantized_copy).precision == "int8"

    # Our own check on pairs of the whole folder: the same decisions, the same accuracy.
    items = scan_folder(trained_model_dir.parent / "data")
    keep = [i for i, f in enumerate(items.files) if f.name != "corrupt.png"]
    items = items.subset(keep)
    pairs = draw_pairs(items.labels, 200, np.random.default_rng(7))
    batch = [(items.files[a], items.files[b]) for a, b, _ in pairs]
    p8 = np.array([r.probability for r in int8.compare_batch(batch)])
    p32 = np.array([r.probability for r in fp32.compare_batch(batch)])
    t = int8.spec.threshold
    assert np.mean((p8 >= t) == (p32 >= t)) >= 0.97
    assert np.abs(p8 - p32).mean() < 0.02
    same = pairs[:, 2] == 1
    acc8, acc32 = np.mean((p8 >= t) == same), np.mean((p32 >= t) == same)
    assert acc32 > 0.75 and abs(acc8 - acc32) <= 0.03, (acc8, acc32)


def test_grad_cam_runs_on_the_float_encoder_and_never_changes_the_verdict(
    quantized_copy, trained_model_dir
):
    data = trained_model_dir.parent / "data"
    left, right = sorted(data.rglob("*.png"))[1], sorted(data.rglob("*.png"))[-1]
    int8 = Twin.load(quantized_copy, precision="int8")
    plain = int8.compare(left, right)
    explained = int8.compare(left, right, cam=True)
    assert explained.logits == pytest.approx(plain.logits, abs=1e-6)
    # The maps are those of the float encoder that the runtime keeps beside the int8 one.
    floating = Twin.load(quantized_copy, precision="bf16" if cpu_has_native_bf16() else "fp32")
    expected = floating.compare(left, right, cam=True)
    assert np.allclose(explained.cam_left, expected.cam_left, atol=1e-5)
    assert np.allclose(explained.cam_right, expected.cam_right, atol=1e-5)
    assert np.isfinite(explained.cam_left).all() and np.isfinite(explained.cam_right).all()
    # File objects can be read once: the float encoder's second pass still sees the image.
    int8.cache.clear()
    with open(left, "rb") as fl, open(right, "rb") as fr:
        from_files = int8.compare(fl, fr, cam=True)
    assert from_files.logits == pytest.approx(plain.logits, abs=1e-6)
    assert np.allclose(from_files.cam_left, expected.cam_left, atol=1e-5)


def test_an_int8_encoder_that_changes_decisions_is_refused_and_nothing_is_written(
    random_model_dir, shapes_dir, tmp_path, capsys
):
    # An untrained model whose threshold is its median probability: every decision sits near
    # the boundary, and an encoder calibrated on one image moves many across it.
    model = tmp_path / "model"
    shutil.copytree(random_model_dir, model)
    files = sorted(shapes_dir.rglob("*.png"))
    p = [r.probability for r in Twin.load(model, precision="fp32").compare_batch(
        list(zip(files[::2], files[1::2], strict=True)))]  # fmt: skip
    spec = ModelSpec.load(model)
    spec.threshold = float(np.median(p))
    spec.save(model)
    before = sorted(q.name for q in model.iterdir()), (model / "twinnet.json").read_bytes()

    code = main(["quantize", str(model), str(shapes_dir), "--calibration", "1"])
    err = capsys.readouterr().err
    assert code != 0
    assert "the int8 encoder changes" in err and "decisions" in err and "not installed" in err
    changed = int(err.split("changes ")[1].split(" of ")[0])
    assert changed > 4  # more than 1% of 400
    assert (
        sorted(q.name for q in model.iterdir()),
        (model / "twinnet.json").read_bytes(),
    ) == before
    with pytest.raises(TwinnetError, match="twinnet quantize"):
        Twin.load(model, precision="int8")


def test_a_stale_or_altered_int8_encoder_is_not_used(quantized_copy, caplog):
    onnx = quantized_copy / INT8_FILE
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with caplog.at_level(logging.WARNING, logger="twinnet.infer.int8"):
        auto = Twin.load(quantized_copy)
    assert auto.precision != "int8"
    assert "does not match the digest" in caplog.text
    with pytest.raises(TwinnetError, match="does not match the digest"):
        Twin.load(quantized_copy, precision="int8")

    # Weights replaced after quantizing (e.g. trained again into the same directory).
    onnx.write_bytes(onnx.read_bytes()[:-1])
    assert Twin.load(quantized_copy, precision="int8").precision == "int8"
    weights = quantized_copy / "encoder.safetensors"
    shutil.copy(weights, quantized_copy.parent / "w")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one weight's lowest bit
    weights.write_bytes(bytes(data))
    with pytest.raises(TwinnetError, match="made from other weights"):
        Twin.load(quantized_copy, precision="int8")
    weights.unlink()  # an incomplete directory is said to be one, int8 or not
    with pytest.raises(TwinnetError, match="is missing; the model directory is incomplete"):
        Twin.load(quantized_copy)


def test_int8_needs_a_quantized_encoder_and_enough_images(random_model_dir, shapes_dir, tmp_path):
    with pytest.raises(TwinnetError, match="no int8 encoder.*twinnet quantize"):
        Twin.load(random_model_dir, precision="int8")
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted(shapes_dir.rglob("*.png"))[:10]:
        shutil.copy(f, few / f.name)
    with pytest.raises(TwinnetError, match="has 10 images.*at least 20 more"):
        quantize_model(random_model_dir, few)
    assert not (random_model_dir / INT8_FILE).exists()


def test_archive_quantize_adds_the_int8_encoder_and_ships_it(trained_model_dir, tmp_path, capsys):
    import zipfile

    model = tmp_path / "model"
    shutil.copytree(trained_model_dir, model)
    data = trained_model_dir.parent / "data"
    store = tmp_path / "store"
    assert main(["archive", str(model), "--out", str(store), "--quantize", str(data)]) == 0
    assert capsys.readouterr().out.strip() == str(store / "twin.mar")
    with zipfile.ZipFile(store / "twin.mar") as mar:
        assert mar.read(INT8_FILE) == (model / INT8_FILE).read_bytes()
        assert json.loads(mar.read("twinnet.json"))["quantization"]["file"] == INT8_FILE


def test_every_installed_engine_is_checked_and_each_runs_what_it_was_checked_for(
    quantized_copy, trained_model_dir, monkeypatch
):
    record = ModelSpec.load(quantized_copy).quantization
    assert set(record["engines"]) == set(installed_engines()) == {"openvino", "onnxruntime"}
    for measured in record["engines"].values():
        assert measured["version"] and measured["agreement"]["pairs"] > 100
        assert measured["agreement"]["changed_decisions"] <= 0.01 * measured["agreement"]["pairs"]
    worst = max(m["agreement"]["changed_decisions"] for m in record["engines"].values())
    assert record["agreement"]["changed_decisions"] == worst

    data = trained_model_dir.parent / "data"
    files = [f for f in sorted(data.rglob("*.png")) if f.name != "corrupt.png"]
    batch = list(zip(files[::2], files[1::2], strict=False))[:60]
    probabilities, fingerprints = {}, {}
    for engine in ENGINES:
        monkeypatch.setenv(ENGINE_ENV, engine)
        twin = Twin.load(quantized_copy, precision="int8")
        assert twin.int8.engine == engine and f"int8_engine={engine}" in repr(twin)
        probabilities[engine] = np.array([r.probability for r in twin.compare_batch(batch)])
        fingerprints[engine] = twin.fingerprint
    monkeypatch.delenv(ENGINE_ENV)
    assert Twin.load(quantized_copy, precision="int8").int8.engine == "openvino"  # auto
    # The same file in two engines: the same decisions (to rounding), and each engine's
    # features cached apart, since they differ in the last bits.
    p_ov, p_ort = probabilities["openvino"], probabilities["onnxruntime"]
    t = record["agreement"]["threshold"]
    assert np.mean((p_ov >= t) == (p_ort >= t)) >= 0.95 and np.abs(p_ov - p_ort).mean() < 0.02
    assert fingerprints["openvino"] != fingerprints["onnxruntime"]


def test_an_engine_whose_agreement_was_not_measured_is_not_used(
    quantized_copy, monkeypatch, caplog
):
    # A record from before OpenVINO ran the file: ONNX Runtime's figures alone.
    spec = ModelSpec.load(quantized_copy)
    del spec.quantization["engines"]
    spec.save(quantized_copy)
    assert Twin.load(quantized_copy, precision="int8").int8.engine == "onnxruntime"
    monkeypatch.setenv(ENGINE_ENV, "openvino")
    with pytest.raises(TwinnetError, match="measured with onnxruntime, not with openvino"):
        Twin.load(quantized_copy, precision="int8")
    with caplog.at_level(logging.WARNING, logger="twinnet.infer.int8"):
        assert Twin.load(quantized_copy).precision != "int8"  # auto: a float path, said
    assert "run `twinnet quantize` again here" in caplog.text
    monkeypatch.setenv(ENGINE_ENV, "tensorrt")
    with pytest.raises(TwinnetError, match="TWINNET_INT8_ENGINE='tensorrt' is not one of"):
        Twin.load(quantized_copy, precision="int8")


def test_a_gallery_index_reloads_the_int8_engine_it_was_built_with(
    quantized_copy, trained_model_dir, tmp_path, monkeypatch
):
    if ModelSpec.load(quantized_copy).head != "cosine":
        pytest.skip("a gallery index needs the cosine head")
    from twinnet.index import GalleryIndex

    monkeypatch.setenv(ENGINE_ENV, "onnxruntime")
    built = Twin.load(quantized_copy, precision="int8")
    data = trained_model_dir.parent / "data"
    GalleryIndex.build(built, data, tmp_path / "index", model_dir=quantized_copy)
    monkeypatch.delenv(ENGINE_ENV)  # auto would now run OpenVINO
    gallery = GalleryIndex.open(tmp_path / "index")
    assert gallery.info["model"]["int8_engine"] == "onnxruntime"
    assert gallery.twin.int8.engine == "onnxruntime"  # as built: its fingerprint matches
    assert gallery.twin.fingerprint == built.fingerprint
