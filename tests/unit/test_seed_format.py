"""The original sample's ``encoder_weight.pth``/``head_weight.pth``: import, export, round trip."""

from __future__ import annotations

import pytest
import torch

from twinnet.cli import main
from twinnet.core.artifacts import load_model_dir, save_model_dir
from twinnet.core.model import build_model
from twinnet.core.spec import ModelSpec

pytestmark = pytest.mark.unit

SIZE = 64  # the weights do not depend on the input size; a small input keeps the test quick


@pytest.fixture(scope="module")
def resnet50_dir(tmp_path_factory):
    """A resnet50 twin with random weights and random batch-norm statistics."""
    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet50", image_size=SIZE)
    model = build_model(spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return save_model_dir(model.eval(), spec, tmp_path_factory.mktemp("r50"))


def _logits(model_dir) -> torch.Tensor:
    model, _ = load_model_dir(model_dir)
    gen = torch.Generator().manual_seed(1)
    left = torch.randn(3, 3, SIZE, SIZE, generator=gen)
    right = torch.randn(3, 3, SIZE, SIZE, generator=gen)
    with torch.no_grad():
        return model(left, right)


def test_export_then_import_gives_identical_logits(resnet50_dir, tmp_path, capsys):
    seed = tmp_path / "seed"
    assert main(["export-seed", str(resnet50_dir), "--out", str(seed)]) == 0
    assert (seed / "encoder_weight.pth").is_file() and (seed / "head_weight.pth").is_file()
    back = tmp_path / "back"
    argv = ["import-seed", str(seed / "encoder_weight.pth"), str(seed / "head_weight.pth")]
    assert main([*argv, "--out", str(back), "--size", str(SIZE)]) == 0
    assert "model directory" in capsys.readouterr().out
    assert torch.equal(_logits(resnet50_dir), _logits(back))


def test_exported_files_have_the_sample_parameter_names(resnet50_dir, tmp_path):
    main(["export-seed", str(resnet50_dir), "--out", str(tmp_path)])
    encoder = torch.load(tmp_path / "encoder_weight.pth", weights_only=True)
    head = torch.load(tmp_path / "head_weight.pth", weights_only=True)
    # a plain Sequential of torchvision resnet50's children, and the sample's plain head
    import torchvision

    reference = torch.nn.Sequential(*list(torchvision.models.resnet50().children())[:-2])
    assert list(encoder) == list(reference.state_dict())
    assert head["4.weight"].shape == (512, 8192)
    assert head["8.weight"].shape == (2, 512)


def test_import_refuses_pickled_objects(tmp_path, capsys):
    bad = tmp_path / "encoder_weight.pth"
    torch.save({"x": tmp_path}, bad)  # a pickled Path object: not a plain tensor dict
    assert main(["import-seed", str(bad), str(bad), "--out", str(tmp_path / "m")]) == 2
    assert "weights-only" in capsys.readouterr().err
