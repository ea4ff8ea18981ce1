"""The model directory (``twinnet.json`` + safetensors) and the original sample's seed format.

Loading runs no pickle: weights are safetensors, and foreign ``.pth`` files are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from twinnet.core.model import TwinModel, build_model
from twinnet.core.spec import SPEC_FILE, ModelSpec, is_timm
from twinnet.core.version import __version__
from twinnet.core.weights import read_state_dict
from twinnet.errors import SpecError

__all__ = [
    "ENCODER_FILE",
    "HEAD_FILE",
    "SEED_ENCODER_FILE",
    "SEED_HEAD_FILE",
    "save_model_dir",
    "load_model_dir",
    "read_spec",
    "import_seed",
    "export_seed",
    "library_versions",
    "is_model_dir",
]

ENCODER_FILE = "encoder.safetensors"
HEAD_FILE = "head.safetensors"
SEED_ENCODER_FILE = "encoder_weight.pth"
SEED_HEAD_FILE = "head_weight.pth"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the weights, recorded in the spec."""
    import torchvision

    versions = {
        "twinnet": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }
    try:
        import fastai

        versions["fastai"] = fastai.__version__
    except ImportError:  # pragma: no cover - fastai is a dependency, but inference needs none
        pass
    return versions


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_model_dir(model: TwinModel, spec: ModelSpec, model_dir: str | Path) -> Path:
    """Write spec and weights; returns the directory. Existing files are replaced."""
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not spec.versions:
        spec.versions = library_versions()
    save_file(_state(model.encoder), str(out / ENCODER_FILE))
    save_file(_state(model.head), str(out / HEAD_FILE))
    spec.save(out)
    return out


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SpecError(f"{what} weights do not fit the spec's architecture: {first}") from None


def read_spec(model_dir: str | Path) -> ModelSpec:
    """The ``twinnet.json`` of a model directory, without loading any weights."""
    root = Path(model_dir)
    if not root.is_dir():
        raise SpecError(f"model directory {root} does not exist")
    return ModelSpec.load(root)


def load_model_dir(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[TwinModel, ModelSpec]:
    """Rebuild the model from ``twinnet.json`` and load its safetensors weights (eval mode)."""
    root = Path(model_dir)
    spec = read_spec(root)
    model = build_model(spec, pretrained=False)
    for part, filename in ((model.encoder, ENCODER_FILE), (model.head, HEAD_FILE)):
        path = root / filename
        if not path.is_file():
            raise SpecError(f"{path} is missing; the model directory is incomplete")
        try:
            state = load_file(str(path))
        except Exception as exc:
            raise SpecError(f"{path} is not a readable safetensors file: {exc}") from None
        _load_into(part, state, filename)
    return model.to(device).eval(), spec


def import_seed(
    encoder_pth: str | Path,
    head_pth: str | Path,
    out_dir: str | Path,
    arch: str = "resnet50",
    image_size: int = 224,
) -> Path:
    """Turn the original sample's ``encoder_weight.pth``/``head_weight.pth`` into a model directory.

    The sample squashes images to a square and uses ImageNet statistics, which the default
    spec reproduces.
    """
    enc_state, head_state = read_state_dict(Path(encoder_pth)), read_state_dict(Path(head_pth))
    hidden = head_state.get("4.weight")
    spec = ModelSpec(
        arch=arch,
        image_size=image_size,
        head_hidden=int(hidden.shape[0]) if hidden is not None else 512,
        recipe={"source": "seed-import"},
    )
    model = build_model(spec)
    _load_into(model.encoder, enc_state, SEED_ENCODER_FILE)
    _load_into(model.head, head_state, SEED_HEAD_FILE)
    return save_model_dir(model, spec, out_dir)


def export_seed(model_dir: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Write a model directory's weights as the sample's two ``.pth`` state dicts."""
    model, spec = load_model_dir(model_dir)
    if is_timm(spec.arch):
        raise SpecError(
            f"export-seed writes the sample's layout, a torchvision ResNet encoder; "
            f"{model_dir} has a {spec.arch} encoder, which the sample cannot load"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    enc, head = out / SEED_ENCODER_FILE, out / SEED_HEAD_FILE
    torch.save(_state(model.encoder), enc)
    torch.save(_state(model.head), head)
    return enc, head


def is_model_dir(path: str | Path) -> bool:
    """True when ``path`` holds a ``twinnet.json``."""
    return (Path(path) / SPEC_FILE).is_file()
