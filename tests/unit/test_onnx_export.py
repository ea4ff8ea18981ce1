"""`twinnet export --format onnx`: ONNX Runtime on the written graphs answers as the model does,
for both heads, at a batch size other than the one exported (the batch is dynamic)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from twinnet.cli import main
from twinnet.core.imaging import build_transforms, decode_image
from twinnet.infer.twin import Twin

pytestmark = pytest.mark.unit
ort = pytest.importorskip("onnxruntime")


def _images(model_dir, shapes_dir, n: int = 5) -> np.ndarray:
    """``n`` real images, preprocessed as twinnet-onnx.json says (the spec's transforms)."""
    files = sorted(shapes_dir.rglob("*.png"))[:: 96 // n][:n]
    pre = build_transforms(Twin.load(model_dir).spec)
    return torch.stack([pre(decode_image(f)) for f in files]).numpy(), files


def test_onnx_graphs_answer_as_the_model_does(any_head_model_dir, shapes_dir, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", str(any_head_model_dir), "--format", "onnx", "--out", str(out)]) == 0
    assert "ONNX Runtime within" in capsys.readouterr().out
    info = json.loads((out / "twinnet-onnx.json").read_text())
    twin = Twin.load(any_head_model_dir, precision="fp32")
    assert info["preprocess"]["image_size"] == twin.spec.image_size
    assert info["onnxruntime_max_relative_difference"] < 1e-4
    x, files = _images(any_head_model_dir, shapes_dir)
    pairs = [(files[i], files[(i + 1) % len(files)]) for i in range(len(files))]
    expected = twin.compare_batch(pairs)

    def session(name):
        return ort.InferenceSession(str(out / info["graphs"][name]))

    if info["head"] == "cosine":
        emb = session("embedding").run(None, {"images": x})[0]
        assert emb.shape == (5, twin.spec.embedding_dim)
        np.testing.assert_allclose(emb, twin.embed(files), atol=1e-4)
        d = info["decision"]
        for i, r in enumerate(expected):  # the stated decision rule gives the model's answer
            cos = float(emb[i] @ emb[(i + 1) % 5])
            p = 1 / (1 + math.exp(-(d["scale"] * cos + d["bias"])))
            assert p == pytest.approx(r.probability, abs=1e-4)
    else:
        maps = session("encoder").run(None, {"images": x})[0]
        right = np.roll(maps, -1, axis=0)
        logits = session("head").run(None, {"left": maps, "right": right})[0]
        ref = np.array([r.logits for r in expected])
        np.testing.assert_allclose(logits, ref, atol=1e-4 * max(1.0, np.abs(ref).max()))


def test_a_pooled_readout_goes_out_as_the_pooled_features(
    random_cosine_dir, shapes_dir, tmp_path, capsys
):
    import dataclasses
    import shutil

    from twinnet.core.spec import ModelSpec

    model_dir = tmp_path / "pooled"
    shutil.copytree(random_cosine_dir, model_dir)
    spec = ModelSpec.load(model_dir)
    dataclasses.replace(spec, readout="pooled").save(model_dir)
    out = tmp_path / "onnx"
    assert main(["export", str(model_dir), "--format", "onnx", "--out", str(out)]) == 0
    info = json.loads((out / "twinnet-onnx.json").read_text())
    assert info["decision"]["embedding"] == "1024 numbers (pooled)"
    x, files = _images(model_dir, shapes_dir)
    emb = ort.InferenceSession(str(out / info["graphs"]["embedding"])).run(None, {"images": x})[0]
    twin = Twin.load(model_dir, precision="fp32")
    assert emb.shape == (5, 1024) == (5, twin.spec.embedding_width)
    np.testing.assert_allclose(emb, twin.embed(files), atol=1e-4)
