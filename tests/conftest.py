"""Shared fixtures: generated data, model directories, and the real images in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real images beside the project; tests using them skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real images not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """Six classes of coloured shapes, 16 images each, 64 px: "same class" is learnable."""
    from twinnet.data.datasets import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), classes=6, per_class=16, size=64)


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    """An untrained resnet18 model directory at 64 px (fast; for plumbing tests)."""
    import torch

    from twinnet.core.artifacts import save_model_dir
    from twinnet.core.model import build_model
    from twinnet.core.spec import ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", image_size=64)
    model = build_model(spec).eval()
    return save_model_dir(model, spec, tmp_path_factory.mktemp("random_model"))


@pytest.fixture(scope="session")
def random_cosine_dir(tmp_path_factory) -> Path:
    """An untrained resnet18 cosine-head model directory at 64 px (fast; for plumbing tests)."""
    import torch

    from twinnet.core.artifacts import save_model_dir
    from twinnet.core.model import build_model
    from twinnet.core.spec import ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", image_size=64, head="cosine", embedding_dim=64)
    model = build_model(spec).eval()
    return save_model_dir(model, spec, tmp_path_factory.mktemp("random_cosine"))


#: A small timm CNN: what a ``timm/NAME`` backbone brings (its own layer names, bicubic
#: resizing from its data config) at a cost the tests can pay.
TIMM_ARCH = "timm/resnet10t"


@pytest.fixture(scope="session")
def timm_model_dir(shapes_dir, tmp_path_factory) -> Path:
    """A cosine twin on a timm backbone from random weights, trained one epoch at 64 px."""
    from twinnet.cli import main

    out = tmp_path_factory.mktemp("timm") / "model"
    argv = ["train", str(shapes_dir), "--out", str(out), "--arch", TIMM_ARCH, "--size", "64",
            "--no-pretrained", "--epochs", "1", "--lr", "3e-3", "--bs", "32",
            "--epoch-pairs", "512", "--seed", "0", "--workers", "0"]  # fmt: skip
    if main(argv) != 0:
        raise RuntimeError("training the timm_model_dir fixture failed")
    return out


@pytest.fixture(scope="session")
def quantized_model_dir(timm_model_dir, tmp_path_factory) -> Path:
    """``timm_model_dir`` with the int8 encoder that ``twinnet quantize`` adds, calibrated on
    128 shapes of its classes and checked on 400 pairs of 232 others: what servers run under
    ``--precision auto`` on a CPU with VNNI."""
    import shutil

    from twinnet.data.datasets import make_shapes_dataset
    from twinnet.infer.quantize import quantize_model

    base = tmp_path_factory.mktemp("quantized")
    shapes = make_shapes_dataset(base / "shapes", classes=6, per_class=60, size=64)
    out = base / "model"
    shutil.copytree(timm_model_dir, out)
    quantize_model(out, shapes)
    return out


@pytest.fixture(scope="session", params=["concat", "cosine"])
def any_head_model_dir(request) -> Path:
    """An untrained model directory of each head in turn: serving tests run for both."""
    name = "random_model_dir" if request.param == "concat" else "random_cosine_dir"
    return request.getfixturevalue(name)


#: The recipe of ``trained_model_dir``: small generated shapes, from scratch, on the CPU.
TRAINED_RECIPE = [
    "--arch", "resnet18", "--size", "32", "--no-pretrained", "--frozen-epochs", "0",
    "--epochs", "4", "--lr", "3e-3", "--bs", "32", "--epoch-pairs", "1024", "--seed", "0",
    "--workers", "0",
]  # fmt: skip


@pytest.fixture(scope="session", params=["cosine", "concat"])
def trained_model_dir(request, tmp_path_factory) -> Path:
    """A resnet18 twin trained from scratch on generated shapes (well above chance), via the CLI.

    One per head, so every test that uses it (training, evaluation, the app, the browser)
    runs for both. Its data folder holds one corrupt file, so training also goes through the
    skip-and-warn path. The data are next to the model, in ``<model_dir>/../data``.
    """
    from twinnet.cli import main
    from twinnet.data.datasets import make_shapes_dataset

    base = tmp_path_factory.mktemp("trained")
    data = make_shapes_dataset(base / "data", classes=6, per_class=40, size=32)
    (data / "circle_0" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = base / "model"
    code = main(["train", str(data), "--out", str(out), *TRAINED_RECIPE, "--head", request.param])
    if code != 0:
        raise RuntimeError(f"training the trained_model_dir fixture failed with exit status {code}")
    return out


@pytest.fixture
def no_aws(tmp_path, monkeypatch) -> None:
    """An environment with no AWS credentials or config anywhere (and no metadata service)."""
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
