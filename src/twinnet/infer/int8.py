"""The int8 encoder: an ONNX Runtime session over the file that ``twinnet quantize`` wrote.

The model directory holds it as ``encoder.int8.onnx``, recorded in ``twinnet.json`` under
``quantization`` with its SHA-256 and that of the float encoder it was made from. A file that
does not match its record, or that was made from other weights, is not used: ``auto`` falls
back to a float path with a warning, and ``int8`` is refused with the reason. An ONNX file
is a protobuf graph, so loading one runs no code from it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from twinnet.core.artifacts import ENCODER_FILE
from twinnet.core.spec import ModelSpec
from twinnet.errors import TwinnetError

__all__ = ["INT8_FILE", "Int8Encoder", "file_sha256", "int8_path", "int8_unavailable"]

log = logging.getLogger(__name__)

INT8_FILE = "encoder.int8.onnx"
INPUT, OUTPUT = "images", "features"


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def int8_path(model_dir: str | Path, spec: ModelSpec) -> Path:
    """Where the spec's ``quantization`` record says the int8 encoder is."""
    return Path(model_dir) / str(spec.quantization.get("file", INT8_FILE))


def int8_unavailable(model_dir: str | Path, spec: ModelSpec) -> str | None:
    """None when ``model_dir`` has a usable int8 encoder, else why it has not."""
    from twinnet.infer.runtime import NO_INT8

    record = spec.quantization
    if not record:
        return NO_INT8
    path = int8_path(model_dir, spec)
    why = None
    if not path.is_file():
        why = f"{path} is missing; run `twinnet quantize` again"
    elif file_sha256(path) != record.get("sha256"):
        why = f"{path} does not match the digest in twinnet.json; run `twinnet quantize` again"
    elif file_sha256(Path(model_dir) / ENCODER_FILE) != record.get("weights_sha256"):
        why = (
            f"{path} was made from other weights than {ENCODER_FILE}; run `twinnet quantize` again"
        )
    else:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            why = "onnxruntime is not installed: pip install 'twinnet[onnx]'"
    if why:
        log.warning("twinnet: not using the int8 encoder: %s", why)
    return why


class Int8Encoder:
    """Images (N, 3, s, s) float32 to encoder feature maps (N, C, h, w) float32, in ORT.

    ``run`` is safe to call from several threads at once (ONNX Runtime sessions are). Its
    threads spin between operators, as ONNX Runtime's do by default, but stop at the end of
    each run: left spinning, they took a core from the threads that decode the next images.
    """

    def __init__(self, path: str | Path, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise TwinnetError(
                "the int8 encoder needs onnxruntime: pip install 'twinnet[onnx]'"
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types
            raise TwinnetError(f"cannot load the int8 encoder {path}: {exc}") from None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: x})[0])
