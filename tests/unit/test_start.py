"""Where training starts: an encoder weights file (torchvision's key names, which timm's ResNets
share, or twinnet's; a DDP prefix; safetensors or weights-only .pth), an earlier model
(--init), and the refusals of what does not fit. The weights are made here: nothing is
downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from twinnet.core.artifacts import load_model_dir, save_model_dir
from twinnet.core.model import build_encoder, build_model
from twinnet.core.spec import ModelSpec
from twinnet.core.weights import guess_arch, load_encoder_weights, read_state_dict
from twinnet.errors import TwinnetError
from twinnet.train.config import PRETRAINED_LR_RANGE, RECIPE_DEFAULTS, TrainConfig, resolve_defaults
from twinnet.train.start import init_from

pytestmark = pytest.mark.unit


def _torchvision_state(arch: str = "resnet18") -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return getattr(torchvision.models, arch)(weights=None).state_dict()


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("form", ["pth", "safetensors", "ddp-prefix", "twinnet-names"])
def test_encoder_weights_load_exactly_whatever_their_names(tmp_path: Path, form: str):
    state = _torchvision_state()
    if form == "twinnet-names":  # an encoder.safetensors of a model directory
        source = build_encoder("resnet18")
        source.load_state_dict(
            {k2: v for k, v in state.items() if (k2 := _tv_to_seq(k)) is not None}
        )
        state = source.state_dict()
    if form == "ddp-prefix":  # a checkpoint saved from DistributedDataParallel
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / ("w.safetensors" if form != "pth" else "w.pth")
    if path.suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    encoder = build_encoder("resnet18")
    load_encoder_weights(encoder, path, "resnet18")
    expected = build_encoder("resnet18")
    expected.load_state_dict(
        {k2: v for k, v in _torchvision_state().items() if (k2 := _tv_to_seq(k)) is not None}
    )
    assert _equal(encoder, expected)


def _tv_to_seq(key: str) -> str | None:
    children = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
    head, _, rest = key.partition(".")
    return None if head == "fc" else f"{children[head]}.{rest}"


def test_a_file_for_another_arch_names_keys_and_its_arch(tmp_path: Path):
    path = tmp_path / "resnet50.pth"
    torch.save(_torchvision_state("resnet50"), path)
    assert guess_arch(read_state_dict(path)) == "resnet50"
    with pytest.raises(TwinnetError) as info:
        load_encoder_weights(build_encoder("resnet18"), path, "resnet18")
    message = str(info.value)
    assert "does not fit a resnet18 encoder" in message and "looks like resnet50" in message
    assert "unexpected 4.0.bn3" in message and "wrong shape 4.0.conv1.weight" in message


def test_a_pickle_is_refused(tmp_path: Path):
    path = tmp_path / "evil.pth"
    torch.save({"weights": object()}, path)  # anything but tensors needs unpickling
    with pytest.raises(TwinnetError, match="weights-only"):
        read_state_dict(path)


@pytest.mark.parametrize("dim", [32, 16])
def test_init_takes_the_encoder_and_a_head_that_fits(tmp_path: Path, dim: int, capsys):
    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", image_size=32, head="cosine", embedding_dim=32)
    source = build_model(spec)
    save_model_dir(source, spec, tmp_path / "source")
    torch.manual_seed(1)
    target_spec = ModelSpec(arch="resnet18", image_size=48, head="cosine", embedding_dim=dim)
    target = build_model(target_spec)
    record = init_from(target, target_spec, tmp_path / "source")
    loaded, _ = load_model_dir(tmp_path / "source")
    assert _equal(target.encoder, loaded.encoder)
    assert _equal(target.head, loaded.head) is (dim == 32)
    assert record["head_taken"] is (dim == 32) and len(record["blake2b"]) == 32
    assert ("head taken" if dim == 32 else "head started fresh") in capsys.readouterr().out


def test_init_refuses_another_arch(tmp_path: Path):
    spec = ModelSpec(arch="resnet18", image_size=32)
    save_model_dir(build_model(spec), spec, tmp_path / "source")
    other = ModelSpec(arch="resnet34", image_size=32)
    with pytest.raises(TwinnetError, match="has a resnet18 encoder"):
        init_from(build_model(other), other, tmp_path / "source")


def test_a_warm_start_gets_its_measured_recipe_and_no_download():
    cfg = resolve_defaults(TrainConfig(out="m", init="earlier"))
    assert cfg.pretrained is False  # nothing to download
    frozen, epochs, lr = RECIPE_DEFAULTS["init"]  # one low rate for every layer group
    assert (cfg.frozen_epochs, cfg.epochs, cfg.lr, cfg.lr_lo, cfg.lr_hi) == (
        frozen, epochs, lr, lr, lr,
    )  # fmt: skip
    preset = resolve_defaults(TrainConfig(out="m", init="earlier", recipe="small-grey"))
    assert (preset.epochs, preset.lr) == (epochs, lr)  # the preset's schedule is for scratch
    assert (preset.size, preset.augment) == (48, "affine")  # its data fields still apply
    weights = resolve_defaults(TrainConfig(out="m", encoder_weights="w.pth"))
    assert (weights.frozen_epochs, weights.epochs, weights.lr) == RECIPE_DEFAULTS["pretrained"]
    assert (weights.lr_lo, weights.lr_hi) == PRETRAINED_LR_RANGE  # ImageNet's: the sample's
    with pytest.raises(TwinnetError, match="give one starting point"):
        resolve_defaults(TrainConfig(out="m", encoder_weights="w.pth", pretrained=True))


def test_offline_pretrained_fails_fast_naming_encoder_weights(tmp_path: Path, monkeypatch):
    import time

    from twinnet.core.model import PretrainedWeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights
    started = time.monotonic()
    try:
        build_encoder("resnet18", pretrained=True)
    except PretrainedWeightsError as exc:
        assert "--encoder-weights FILE" in str(exc) and "download.pytorch.org" in str(exc)
        assert time.monotonic() - started < 30
    else:
        pytest.skip("this machine can download torchvision's weights")


# ------------------------------------------------------------------ timm backbones (timm/NAME)
TIMM = "timm/resnet10t"


def test_a_timm_checkpoint_loads_into_a_timm_encoder_without_its_classifier(tmp_path: Path):
    import timm

    torch.manual_seed(5)
    full = timm.create_model("resnet10t", num_classes=1000)  # what timm's hub files hold
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    encoder = build_encoder(TIMM)
    load_encoder_weights(encoder, path, TIMM)
    expected = {k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}
    assert encoder.state_dict().keys() == expected.keys()
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in expected.items())


def test_a_file_for_another_network_does_not_fit_a_timm_encoder(tmp_path: Path):
    path = tmp_path / "resnet50.pth"
    torch.save(_torchvision_state("resnet50"), path)
    with pytest.raises(TwinnetError) as info:
        load_encoder_weights(build_encoder(TIMM), path, TIMM)
    message = str(info.value)
    assert f"does not fit a {TIMM} encoder" in message and "looks like resnet50" in message
    assert "missing conv1.0.weight" in message and "unexpected conv1.weight" in message


def test_timm_encoders_give_a_feature_map_and_transformers_are_refused():
    from twinnet.core.backbones import backbone_fields
    from twinnet.errors import SpecError

    fields = backbone_fields(TIMM)  # timm's data config, not ImageNet's 224 px default
    assert fields["image_size"] == 176 and fields["interpolation"] == "bicubic"
    spec = ModelSpec(arch=TIMM, head="cosine", **{**fields, "image_size": 64})
    model = build_model(spec).eval()
    with torch.no_grad():
        maps = model.encode(torch.zeros(2, 3, 64, 64))
    assert maps.shape == (2, spec.feature_channels, spec.feature_size, spec.feature_size)
    for name, why in [("timm/vit_tiny_patch16_224", "not a feature map"),
                      ("timm/swin_tiny_patch4_window7_224", "not a feature map"),
                      ("timm/resnet10z", "timm has no model")]:  # fmt: skip
        with pytest.raises(SpecError, match=why):
            backbone_fields(name)
    with pytest.raises(SpecError, match="must record its backbone"):
        ModelSpec(arch=TIMM)  # a spec that could not rebuild the head


def test_spec_keys_beyond_format_1_are_written_only_when_used(tmp_path: Path):
    import json

    from twinnet.core.backbones import backbone_fields

    plain = ModelSpec(arch="resnet18", image_size=32).to_dict()
    assert "backbone" not in plain and "interpolation" not in plain
    spec = ModelSpec(arch=TIMM, **backbone_fields(TIMM, 48))
    spec.save(tmp_path)
    data = json.loads((tmp_path / "twinnet.json").read_text())
    assert data["interpolation"] == "bicubic" and data["backbone"]["channels"] == 512
    assert ModelSpec.load(tmp_path) == spec


def test_init_carries_a_timm_encoder_over(tmp_path: Path):
    from twinnet.core.backbones import backbone_fields

    torch.manual_seed(0)
    spec = ModelSpec(arch=TIMM, head="cosine", **backbone_fields(TIMM, 32))
    save_model_dir(build_model(spec), spec, tmp_path / "source")
    torch.manual_seed(1)
    target = build_model(spec)
    record = init_from(target, spec, tmp_path / "source")
    assert _equal(target.encoder, load_model_dir(tmp_path / "source")[0].encoder)
    assert record["arch"] == TIMM and record["head_taken"] is True


def test_train_takes_a_timm_arch_and_refuses_a_bad_one(capsys):
    from twinnet.cli import main

    assert resolve_defaults(TrainConfig(out="m", arch=TIMM)).size is None  # the backbone's
    assert resolve_defaults(TrainConfig(out="m", arch="resnet18")).size == 224
    with pytest.raises(SystemExit):
        main(["train", "data", "--out", "m", "--arch", "vgg16"])
    assert "timm/NAME" in capsys.readouterr().err


def test_offline_pretrained_timm_fails_fast_naming_encoder_weights():
    import time

    from twinnet.core.backbones import PretrainedWeightsError

    started = time.monotonic()
    try:
        build_encoder(TIMM, pretrained=True)
    except PretrainedWeightsError as exc:
        assert "--encoder-weights FILE" in str(exc)
        assert "huggingface.co/timm/resnet10t" in str(exc)
        assert time.monotonic() - started < 15
    else:
        pytest.skip("this machine can download timm's weights")


def test_export_seed_refuses_a_timm_encoder(tmp_path: Path):
    from twinnet.core.artifacts import export_seed
    from twinnet.core.backbones import backbone_fields
    from twinnet.errors import SpecError

    spec = ModelSpec(arch=TIMM, **backbone_fields(TIMM, 32))
    save_model_dir(build_model(spec), spec, tmp_path / "m")
    with pytest.raises(SpecError, match="sample's layout"):
        export_seed(tmp_path / "m", tmp_path / "seed")
    assert not (tmp_path / "seed").exists()
