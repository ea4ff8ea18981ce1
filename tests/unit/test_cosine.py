"""The cosine head: symmetry, unit-norm embeddings, the calibrated map, Grad-CAM, old specs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from twinnet.core.artifacts import load_model_dir, save_model_dir
from twinnet.core.calibration import fit_calibration
from twinnet.core.model import CosineHead, build_model
from twinnet.core.spec import SPEC_FILE, ModelSpec
from twinnet.infer.twin import Twin

pytestmark = pytest.mark.unit

SIZE = 64


@pytest.fixture(scope="module")
def cosine_model():
    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", image_size=SIZE, head="cosine", embedding_dim=32)
    model = build_model(spec).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model, spec


def test_cosine_head_is_symmetric_and_embeddings_have_unit_norm(cosine_model):
    model, _ = cosine_model
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(5, 3, SIZE, SIZE, generator=gen)
    b = torch.randn(5, 3, SIZE, SIZE, generator=gen)
    with torch.no_grad():
        ab, ba = model(a, b), model(b, a)
        emb = model.embed(a)
    assert torch.equal(ab, ba)  # exactly: the cosine is a symmetric dot product
    assert emb.shape == (5, 32)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(5))
    # logits are [-z/2, z/2] with z = scale * cos + bias, so softmax[1] == sigmoid(z)
    cos = (model.embed(a) * model.embed(b)).sum(1)
    z = model.head.scale * cos + model.head.bias
    torch.testing.assert_close(ab, torch.stack([-z / 2, z / 2], dim=1))
    torch.testing.assert_close(torch.softmax(ab, 1)[:, 1], torch.sigmoid(z))


def test_identical_images_score_cosine_one(cosine_model):
    model, _ = cosine_model
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logits = model(x, x)
    z = logits[:, 1] - logits[:, 0]
    torch.testing.assert_close(z, model.head.scale + model.head.bias + torch.zeros(2))


def test_calibration_lives_in_the_spec_not_in_the_weights(cosine_model, tmp_path):
    model, spec = cosine_model
    cal = fit_calibration([1, 1, 1, 0, 0, 0, 1, 0], [0.9, 0.8, 0.4, 0.5, 0.1, 0.2, 0.7, 0.3])
    spec = ModelSpec.from_dict({**spec.to_dict(), "calibration": cal.to_dict()})
    spec.threshold = cal.threshold
    out = save_model_dir(model, spec, tmp_path / "m")
    loaded, loaded_spec = load_model_dir(out)
    assert loaded_spec.calibration == cal.to_dict()
    assert float(loaded.head.scale) == pytest.approx(cal.scale)
    assert float(loaded.head.bias) == pytest.approx(cal.bias)
    from safetensors.torch import load_file

    assert not {"scale", "bias"} & set(load_file(str(out / "head.safetensors")))


def test_twin_scores_cosine_models_by_embeddings(cosine_model, shapes_dir):
    model, spec = cosine_model
    twin = Twin.from_model(model, spec, device="cpu", precision="fp32")
    files = sorted(shapes_dir.rglob("*.png"))[:6]
    emb = twin.embed(files)
    assert emb.shape == (6, spec.embedding_dim)
    assert twin.feature_maps(files[:2]).shape == (2, 512, 2, 2)
    # one matrix product: margins are scale * cos + bias of the embeddings
    margins = twin.margins(files[0], files[1:])
    cos = (emb[1:] @ emb[0]).numpy()
    np.testing.assert_allclose(
        margins, float(model.head.scale) * cos + float(model.head.bias), atol=1e-4
    )
    # compare (embeddings) and compare with cam (feature maps) agree
    plain, with_cam = twin.compare(files[0], files[1]), twin.compare(files[0], files[1], cam=True)
    assert plain.logits == pytest.approx(with_cam.logits, abs=1e-4)
    assert with_cam.cam_left.shape == (2, 2)
    # the cache holds embeddings (D floats), not feature maps, for plain comparisons
    twin.cache.clear()
    twin.compare(files[2], files[3])
    assert twin.cache.nbytes == 2 * spec.embedding_dim * 4


def test_threshold_can_be_overridden_per_call(cosine_model, shapes_dir):
    model, spec = cosine_model
    twin = Twin.from_model(model, spec, device="cpu", precision="fp32")
    a, b = sorted(shapes_dir.rglob("*.png"))[:2]
    r = twin.compare(a, b)
    low = twin.compare(a, b, threshold=max(1e-6, r.probability / 2))
    high = twin.compare(a, b, threshold=min(1 - 1e-6, (1 + r.probability) / 2))
    assert low.same and not high.same
    assert low.probability == high.probability == r.probability
    with pytest.raises(Exception, match="threshold"):
        twin.compare(a, b, threshold=1.5)


def test_a_spec_without_head_loads_as_concat(tmp_path):
    spec = ModelSpec(arch="resnet18", image_size=SIZE)
    data = spec.to_dict()
    for key in ("head", "embedding_dim", "calibration"):
        data.pop(key)
    (tmp_path / SPEC_FILE).write_text(json.dumps(data))
    loaded = ModelSpec.load(tmp_path)
    assert loaded.head == "concat" and not loaded.has_embeddings
    assert isinstance(build_model(loaded).head, torch.nn.Sequential)
    assert isinstance(build_model(ModelSpec(head="cosine", arch="resnet18")).head, CosineHead)


def test_unknown_head_is_refused():
    with pytest.raises(Exception, match="unknown head"):
        ModelSpec(head="triplet")


def test_concat_model_has_no_embedding():
    model = build_model(ModelSpec(arch="resnet18", image_size=SIZE))
    with pytest.raises(Exception, match="--head cosine"):
        model.embed(torch.zeros(1, 3, SIZE, SIZE))
