"""A model directory as ONNX files, for Triton, ONNX Runtime or any other ONNX server.

The cosine head goes out as one graph, images to unit-norm embeddings (encoder, pooling and
the layer the spec's ``readout`` names: the projection, or the batch-normalised pooled
features); a pair's probability of "same" is then ``sigmoid(scale * cos + bias)`` with the
calibration written beside it. The concat head scores pairs, so it goes out as two graphs:
the encoder (images to feature maps) and the head (two feature maps to the two logits). The
batch dimension is dynamic. ``twinnet-onnx.json`` records the preprocessing that the graphs
expect (the spec's resize, interpolation, mean and std), the calibration, and the largest
difference from PyTorch that ONNX Runtime showed on a check batch when it is installed.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from twinnet.core.artifacts import load_model_dir
from twinnet.errors import TwinnetError

__all__ = ["export_onnx", "export_graph", "ONNX_INFO", "ONNX_TOLERANCE"]

ONNX_INFO = "twinnet-onnx.json"
#: The largest difference from PyTorch (fp32) accepted on the check batch, relative to the
#: largest value where that exceeds 1 (feature maps can run into the hundreds).
ONNX_TOLERANCE = 1e-4


class _Embed(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)


class _Head(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.model.compare_features(left, right)


def export_graph(
    module: nn.Module, args: tuple, path: Path, inputs: list[str], output: str
) -> None:
    """Write ``module`` as an ONNX graph with a dynamic batch (the dynamo exporter)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                module, args, str(path), input_names=inputs, output_names=[output],
                dynamic_shapes=tuple({0: batch} for _ in args), dynamo=True,
            )  # fmt: skip
    except ImportError as exc:
        raise TwinnetError(
            f"ONNX export needs onnx and onnxscript ({exc}): pip install 'twinnet[onnx]'"
        ) from None


def _largest_difference(graphs: dict[str, Path], model: nn.Module, spec: Any) -> float | None:
    """Run the graphs in ONNX Runtime on a check batch of 3; the largest gap from PyTorch."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    s = spec.image_size
    x = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(0))
    run = {name: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
           for name, p in graphs.items()}  # fmt: skip
    with torch.no_grad():
        if "embedding" in graphs:
            ours = run["embedding"].run(None, {"images": x.numpy()})[0]
            return _relative_gap(ours, model.embed(x).numpy())
        maps = run["encoder"].run(None, {"images": x.numpy()})[0]
        gap = _relative_gap(maps, model.encode(x).numpy())
        left, right = maps, np.ascontiguousarray(maps[::-1])
        logits = run["head"].run(None, {"left": left, "right": right})[0]
        expected = model.compare_features(torch.from_numpy(left), torch.from_numpy(right))
        return max(gap, _relative_gap(logits, expected.numpy()))


def _relative_gap(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Largest absolute difference, relative to the largest value when that exceeds 1."""
    return float(np.abs(ours - theirs).max() / max(1.0, float(np.abs(theirs).max())))


def export_onnx(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``model_dir`` as ONNX graphs and ``twinnet-onnx.json`` into ``out_dir``.

    Raises:
        TwinnetError: the export's libraries are missing, or ONNX Runtime's answers differ
            from PyTorch's by more than :data:`ONNX_TOLERANCE`.
    """
    model, spec = load_model_dir(model_dir)
    model = model.float().eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = spec.image_size
    x = torch.zeros(2, 3, s, s)
    if spec.has_embeddings:
        graphs = {"embedding": out / "embedding.onnx"}
        export_graph(_Embed(model).eval(), (x,), graphs["embedding"], ["images"], "embeddings")
    else:
        graphs = {"encoder": out / "encoder.onnx", "head": out / "head.onnx"}
        export_graph(model.encoder, (x,), graphs["encoder"], ["images"], "features")
        with torch.no_grad():
            maps = model.encode(x)
        pair = (maps, maps.flip(0).clone())  # two tensors: one passed twice is one input
        export_graph(_Head(model).eval(), pair, graphs["head"], ["left", "right"], "logits")
    gap = _largest_difference(graphs, model, spec)
    if gap is not None and gap > ONNX_TOLERANCE:
        raise TwinnetError(
            f"ONNX Runtime differs from PyTorch by {gap:.2e} (> {ONNX_TOLERANCE:g}) on the "
            "check batch; the graphs were written but should not be served"
        )
    info = {
        "model": spec.name,
        "head": spec.head,
        "graphs": {name: p.name for name, p in graphs.items()},
        "input": {
            "name": "images",
            "shape": ["batch", 3, s, s],
            "dtype": "float32",
            "layout": "NCHW, RGB, scaled to [0, 1], then (x - mean) / std",
        },  # fmt: skip
        "preprocess": {
            "image_size": s,
            "resize_method": spec.resize_method,
            "interpolation": spec.interpolation,
            "mean": list(spec.mean),
            "std": list(spec.std),
        },  # fmt: skip
        "decision": (
            {
                "score": "cosine of the two embeddings",
                "embedding": f"{spec.embedding_width} numbers ({spec.readout})",
                "probability": "sigmoid(scale * cosine + bias)",
                "scale": model.head.scale.item(),
                "bias": model.head.bias.item(),
            }
            if spec.has_embeddings
            else {"probability": "softmax(logits)[1]", "logits": "[different, same]"}
        ),  # fmt: skip
        "threshold": spec.threshold,
        "calibration": spec.calibration,
        "onnxruntime_max_relative_difference": gap,
        "spec": spec.to_dict(),
    }
    path = out / ONNX_INFO
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path
