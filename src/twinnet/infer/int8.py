"""The int8 encoder: the ONNX file that ``twinnet quantize`` wrote, run by OpenVINO or ONNX
Runtime.

The model directory holds it as ``encoder.int8.onnx``, recorded in ``twinnet.json`` under
``quantization`` with its SHA-256 and that of the float encoder it was made from. A file that
does not match its record, or that was made from other weights, is not used: ``auto`` falls
back to a float path with a warning, and ``int8`` is refused with the reason. An ONNX file
is a protobuf graph, so loading one runs no code from it.

Two engines run the same file. OpenVINO is preferred: its int8 kernels use AMX where the CPU
has it and ran the encoder about twice as fast as ONNX Runtime on AVX512-VNNI/AMX CPUs (see
docs/benchmarks.md). An engine runs a model only when ``twinnet quantize`` measured that
engine's agreement with fp32 (``quantization.engines``), since two engines round differently;
records written before there were two name ONNX Runtime alone. ``TWINNET_INT8_ENGINE``
(``auto``, ``openvino`` or ``onnxruntime``) chooses one by hand.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinnet.core.artifacts import ENCODER_FILE
from twinnet.core.spec import ModelSpec
from twinnet.errors import TwinnetError

__all__ = [
    "ENGINES",
    "ENGINE_ENV",
    "INT8_FILE",
    "Int8Encoder",
    "choose_engine",
    "engine_version",
    "file_sha256",
    "installed_engines",
    "int8_path",
    "int8_unavailable",
    "recorded_engines",
]

log = logging.getLogger(__name__)

INT8_FILE = "encoder.int8.onnx"
INPUT, OUTPUT = "images", "features"
#: The engines that run the int8 file, in the order ``auto`` prefers them (fastest first).
ENGINES = ("openvino", "onnxruntime")
#: Chooses the engine: ``auto`` (default), or one of :data:`ENGINES`.
ENGINE_ENV = "TWINNET_INT8_ENGINE"
_INSTALL = "pip install 'twinnet[int8]'"


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


def installed_engines() -> list[str]:
    """The engines of :data:`ENGINES` that can be imported here, in preference order."""
    return [name for name in ENGINES if importlib.util.find_spec(name) is not None]


def engine_version(name: str) -> str:
    """The installed version of an engine."""
    if name == "openvino":
        import openvino

        return str(openvino.__version__).split("-")[0]
    import onnxruntime

    return str(onnxruntime.__version__)


def recorded_engines(record: dict[str, Any]) -> list[str]:
    """The engines whose agreement with fp32 a ``quantization`` record holds."""
    if "engines" in record:
        return [name for name in ENGINES if name in record["engines"]]
    return ["onnxruntime"] if record else []  # written when ONNX Runtime was the only one


def choose_engine(
    record: dict[str, Any], wanted: str | None = None
) -> tuple[str | None, str | None]:
    """``(engine, None)`` for the engine that will run the int8 file, or ``(None, why)``.

    ``wanted`` names one (or ``auto``); by default :data:`ENGINE_ENV` does, else ``auto``.
    """
    if wanted is None:
        wanted = os.environ.get(ENGINE_ENV, "auto")
    wanted = wanted.strip().lower() or "auto"
    if wanted != "auto" and wanted not in ENGINES:
        return None, f"{ENGINE_ENV}={wanted!r} is not one of auto, {', '.join(ENGINES)}"
    candidates = list(ENGINES) if wanted == "auto" else [wanted]
    recorded, installed = recorded_engines(record), installed_engines()
    for name in candidates:
        if name in recorded and name in installed:
            return name, None
    if not installed:
        return None, f"no int8 engine is installed: {_INSTALL}"
    if wanted != "auto" and wanted not in installed:
        return None, f"{wanted} is not installed: {_INSTALL}"
    return None, (
        f"its agreement with fp32 was measured with {', '.join(recorded) or 'no engine'}, not "
        f"with {' or '.join(c for c in candidates if c in installed)}; run `twinnet quantize` "
        "again here"
    )


def int8_unavailable(
    model_dir: str | Path, spec: ModelSpec, engine: str | None = None
) -> str | None:
    """None when ``model_dir`` has a usable int8 encoder (in ``engine``, by default the one
    :func:`choose_engine` picks), else why it has not."""
    from twinnet.infer.runtime import NO_INT8

    record = spec.quantization
    if not record:
        return NO_INT8
    path, weights = int8_path(model_dir, spec), Path(model_dir) / ENCODER_FILE
    why = None
    if not path.is_file():
        why = f"{path} is missing; run `twinnet quantize` again"
    elif not weights.is_file():  # loading the model says so in its own words
        why = f"{weights} is missing"
    elif file_sha256(path) != record.get("sha256"):
        why = f"{path} does not match the digest in twinnet.json; run `twinnet quantize` again"
    elif file_sha256(weights) != record.get("weights_sha256"):
        why = (
            f"{path} was made from other weights than {ENCODER_FILE}; run `twinnet quantize` again"
        )
    else:
        why = choose_engine(record, engine)[1]
    if why:
        log.warning("twinnet: not using the int8 encoder: %s", why)
    return why


def _onnxruntime(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """ONNX Runtime's session. Its threads spin between operators, as ONNX Runtime's do by
    default, but stop at the end of each run: left spinning, they took a core from the
    threads that decode the next images."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT], {INPUT: x})[0]


def _openvino(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """OpenVINO's compiled model: one stream of ``threads`` threads, not pinned to cores
    (several workers share the machine), and a pool of infer requests, one per concurrent
    caller (a request is not thread-safe; the compiled model is)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(path)), "CPU",
        {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": False,
         "PERFORMANCE_HINT": "LATENCY"},
    )  # fmt: skip
    idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def run(x: np.ndarray) -> np.ndarray:
        try:
            request = idle.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:  # the output is the request's buffer: copied before the request is reused
            return np.array(request.infer({0: x})[0], copy=True)
        finally:
            idle.put(request)

    return run


class Int8Encoder:
    """Images (N, 3, s, s) float32 to encoder feature maps (N, C, h, w) float32.

    ``engine`` is one of :data:`ENGINES`. The engine loads the file in a background thread,
    so that a caller can load the float model meanwhile (OpenVINO compiles for 0.3 s, about
    as long as torch builds and loads a resnet50); :meth:`wait` joins it and raises its
    error, and the first call waits. Calling it is safe from several threads at once.
    """

    def __init__(self, path: str | Path, threads: int, engine: str = "onnxruntime") -> None:
        if engine not in ENGINES:
            raise TwinnetError(f"unknown int8 engine {engine!r}; one of {', '.join(ENGINES)}")
        if engine not in installed_engines():
            raise TwinnetError(f"the int8 encoder's engine {engine} is not installed: {_INSTALL}")
        self.engine = engine
        self._run: Callable[[np.ndarray], np.ndarray] | None = None
        self._error: str | None = None
        self._loading = threading.Thread(
            target=self._load, args=(Path(path), max(1, int(threads))),
            name="twinnet-int8-load", daemon=True,
        )  # fmt: skip
        self._loading.start()

    def _load(self, path: Path, threads: int) -> None:
        make = _openvino if self.engine == "openvino" else _onnxruntime
        try:
            self._run = make(path, threads)
        except Exception as exc:  # each engine raises its own exception types
            self._error = f"{self.engine} cannot load the int8 encoder {path}: {exc}"

    def wait(self) -> Int8Encoder:
        """Block until the engine has loaded the file; raise TwinnetError if it could not."""
        self._loading.join()
        if self._run is None:
            raise TwinnetError(self._error or "the int8 encoder did not load")
        return self

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        run = self._run or self.wait()._run
        x = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        return torch.from_numpy(run(x))  # type: ignore[misc]
