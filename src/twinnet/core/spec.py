"""``ModelSpec``: the one description that travels with the weights.

Like timm's ``PretrainedCfg``, the spec records everything needed to rebuild the
model (``build_model``) and its preprocessing (``build_transforms``), so no stage
restates the architecture or the transforms by hand.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from twinnet.errors import SpecError

__all__ = [
    "ModelSpec",
    "SPEC_FILE",
    "FORMAT_VERSION",
    "ARCHS",
    "HEADS",
    "READOUTS",
    "TIMM_PREFIX",
    "INTERPOLATIONS",
    "is_timm",
    "check_arch",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

SPEC_FILE = "twinnet.json"
FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Channels of the last feature map of each torchvision encoder; any timm CNN is also
#: accepted as ``timm/NAME`` (:mod:`twinnet.core.backbones`).
ARCHS: dict[str, int] = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
TIMM_PREFIX = "timm/"
RESIZE_METHODS = ("squish", "crop", "pad")
#: Resampling filters of the resize (timm's data config names one per backbone).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
#: ``concat``: the original sample's pair classifier; ``cosine``: an L2-normalised embedding
#: per image, scored by the cosine of two embeddings through a calibrated mapping.
HEADS = ("concat", "cosine")
#: What a cosine head compares: its trained projection, or the pooled features before it.
READOUTS = ("projection", "pooled")


def is_timm(arch: str) -> bool:
    """True for ``timm/NAME`` architectures."""
    return arch.startswith(TIMM_PREFIX)


def check_arch(arch: str) -> str:
    """``arch`` when it names a known encoder (argparse's ``type``); else a clear error."""
    if arch in ARCHS or (is_timm(arch) and len(arch) > len(TIMM_PREFIX)):
        return arch
    raise SpecError(
        f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}, or a timm CNN as "
        "timm/NAME (for example timm/convnext_tiny, timm/efficientnet_b0)"
    )


@dataclass
class ModelSpec:
    """Architecture, preprocessing, decision rule and provenance of a twin model.

    Attributes:
        arch: torchvision ResNet name, one of :data:`ARCHS`, or ``timm/NAME``.
        image_size: side of the square network input, in pixels.
        resize_method: ``squish`` (the original sample's ``Resize((s, s))``),
            ``crop`` (resize the short side, centre crop) or ``pad``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
        interpolation: the resize's resampling filter, one of :data:`INTERPOLATIONS`.
        backbone: for a timm ``arch``, what :func:`twinnet.core.backbones.describe`
            measured: feature channels and downsampling, timm's version and data config.
        head: ``concat`` (the original sample's head; what a spec without the key means) or
            ``cosine`` (an embedding per image; what ``twinnet train`` builds by default).
        head_hidden: width of the concat head's hidden layer.
        embedding_dim: width of the cosine head's projection, the layer its loss trains.
        readout: what the cosine head compares: ``projection`` (the trained embedding; what
            a spec without the key means) or ``pooled`` (the pooled encoder features,
            batch-normalised with training statistics, before the projection), each
            L2-normalised. Training keeps the one its held-out classes separate better.
        dropout: the head's two dropout probabilities.
        threshold: probability of "same" at or above which the verdict is "same".
        calibration: for the cosine head, the fitted cosine-to-logit mapping and how it
            was fitted (:class:`twinnet.core.calibration.Calibration` as a dict); empty until fitted.
        name: model name used by servers (``/predictions/<name>``).
        labels: how classes were read (``folder`` or ``regex:<pattern>``).
        split: split mode, fraction, seed and the classes on each side.
        recipe: the training hyper-parameters.
        classes: image count per class of the training data.
        metrics: final validation metrics.
        versions: library versions that produced the weights.
        quantization: the int8 encoder beside the weights, when ``twinnet quantize`` made one:
            its file and digest, the weights it came from, the method, the calibration set's
            size and the agreement with fp32 measured on held-out pairs; empty otherwise.
    """

    arch: str = "resnet50"
    image_size: int = 224
    resize_method: str = "squish"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    backbone: dict[str, Any] = field(default_factory=dict)
    head: str = "concat"
    head_hidden: int = 512
    embedding_dim: int = 128
    readout: str = "projection"
    dropout: tuple[float, float] = (0.05, 0.1)
    threshold: float = 0.5
    calibration: dict[str, Any] = field(default_factory=dict)
    name: str = "twin"
    labels: str = "folder"
    split: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_arch(self.arch)
        if is_timm(self.arch) and not int(self.backbone.get("channels", 0)) > 0:
            raise SpecError(
                f"the spec of {self.arch} must record its backbone's channels "
                "(twinnet.core.backbones.backbone_fields measures them)"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise SpecError(
                f"unknown interpolation {self.interpolation!r}; choose one of {INTERPOLATIONS}"
            )
        if not 16 <= int(self.image_size) <= 2048:
            raise SpecError(f"image_size must be between 16 and 2048, got {self.image_size}")
        if self.head not in HEADS:
            raise SpecError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        if not 2 <= int(self.embedding_dim) <= 4096:
            raise SpecError(f"embedding_dim must be between 2 and 4096, got {self.embedding_dim}")
        self.embedding_dim = int(self.embedding_dim)
        if self.readout not in READOUTS:
            raise SpecError(f"unknown readout {self.readout!r}; choose one of {READOUTS}")
        if self.resize_method not in RESIZE_METHODS:
            raise SpecError(
                f"unknown resize_method {self.resize_method!r}; choose one of {RESIZE_METHODS}"
            )
        if not 0.0 < float(self.threshold) < 1.0:
            raise SpecError(f"threshold must lie strictly between 0 and 1, got {self.threshold}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise SpecError("mean and std need three values each, std positive")
        self.image_size = int(self.image_size)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.dropout = tuple(float(v) for v in self.dropout)

    @property
    def feature_channels(self) -> int:
        """Channels of one image's encoder feature map."""
        return int(self.backbone["channels"]) if is_timm(self.arch) else ARCHS[self.arch]

    @property
    def head_in(self) -> int:
        """Concat head input width: two images, each max- and average-pooled (8192 for resnet50)."""
        return 4 * self.feature_channels

    @property
    def embedding_width(self) -> int:
        """Width of the embeddings a cosine model compares (and an index stores)."""
        return 2 * self.feature_channels if self.readout == "pooled" else self.embedding_dim

    @property
    def has_embeddings(self) -> bool:
        """True for heads that map each image alone to an embedding (``cosine``)."""
        return self.head == "cosine"

    @property
    def feature_size(self) -> int:
        """Side of the encoder's feature map: 7 at 224 px for a backbone that downsamples 32x."""
        return -(-self.image_size // int(self.backbone.get("reduction", 32)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the format version first.

        Keys added since format 1 are written only when they differ from their default, so
        a ResNet model stays readable by earlier releases.
        """
        d = asdict(self)
        d["mean"], d["std"], d["dropout"] = list(self.mean), list(self.std), list(self.dropout)
        defaults = (
            ("interpolation", "bilinear"), ("backbone", {}), ("quantization", {}),
            ("readout", "projection"),
        )  # fmt: skip
        for key, default in defaults:
            if d[key] == default:
                del d[key]
        return {"format_version": d.pop("format_version"), **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Build a spec from parsed JSON, refusing newer formats and unknown keys."""
        if not isinstance(data, dict):
            raise SpecError("twinnet.json must hold a JSON object")
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise SpecError(
                f"twinnet.json has format_version {version!r}; this twinnet reads up to "
                f"{FORMAT_VERSION}. Upgrade twinnet to load this model."
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"twinnet.json has unknown keys: {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise SpecError(f"twinnet.json is inconsistent: {exc}") from None

    def save(self, model_dir: str | Path) -> Path:
        """Write ``twinnet.json`` into ``model_dir`` and return its path."""
        path = Path(model_dir) / SPEC_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: a crash mid-write (or `twinnet calibrate` re-writing a served model's spec)
        # never leaves a half-written file behind.
        fd, tmp = tempfile.mkstemp(prefix=".twinnet-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelSpec:
        """Read ``twinnet.json`` from a model directory."""
        path = Path(model_dir) / SPEC_FILE
        if not path.is_file():
            raise SpecError(
                f"{path} not found: {model_dir} is not a twinnet model directory "
                "(create one with `twinnet train` or `twinnet import-seed`)"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SpecError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)
