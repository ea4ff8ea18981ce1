"""twinnet: train, explain and serve twin (Siamese) image networks.

Heavy parts (fastai, TorchServe, boto3, Streamlit) are imported only by the modules
that need them, so ``from twinnet import Twin`` stays light.
"""

from __future__ import annotations

from twinnet.core.spec import ModelSpec
from twinnet.core.version import __version__
from twinnet.errors import DataError, ImageError, SpecError, TwinnetError

__all__ = [
    "__version__",
    "ModelSpec",
    "TwinnetError",
    "ImageError",
    "SpecError",
    "DataError",
    "build_model",
    "build_transforms",
    "load_model_dir",
    "save_model_dir",
    "Twin",
    "CompareResult",
]


def __getattr__(name: str):
    """Import the torch-heavy API on first use."""
    if name == "build_model":
        from twinnet.core.model import build_model

        return build_model
    if name == "build_transforms":
        from twinnet.core.imaging import build_transforms

        return build_transforms
    if name in ("load_model_dir", "save_model_dir"):
        from twinnet.core import artifacts

        return getattr(artifacts, name)
    if name in ("Twin", "CompareResult"):
        from twinnet.infer import twin as inference

        return getattr(inference, name)
    raise AttributeError(f"module 'twinnet' has no attribute {name!r}")
