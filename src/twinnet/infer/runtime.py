"""Where and how the encoder runs: device, precision, memory format and threads.

The fastest CPU path is an int8 encoder in OpenVINO or ONNX Runtime, made by
``twinnet quantize`` and checked there against fp32 on held-out pairs
(:mod:`twinnet.infer.int8`). ``auto`` takes it
when the model directory has one and the CPU has int8 dot products (VNNI or AMX); Grad-CAM
still runs on a float encoder, since it needs a model that gradients can flow through.

The float fast path runs the encoder in bfloat16 with channels-last tensors and batch norm
folded into the convolutions, but only on CPUs with native bf16 dot products (AVX512-BF16
or AMX). Elsewhere oneDNN would emulate bf16 and be slower than fp32, so ``auto`` falls
back to fp32 there. The head always runs in fp32: its first batch norm normalises the
pooled features of two images and is the part most sensitive to rounding.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from twinnet.core.precision import FLOAT_PRECISIONS, PRECISIONS
from twinnet.errors import TwinnetError

__all__ = [
    "PRECISIONS",
    "FLOAT_PRECISIONS",
    "NO_INT8",
    "Runtime",
    "cpu_flags",
    "cpu_has_native_bf16",
    "cpu_has_int8_dot",
    "resolve_runtime",
    "fast_encoder",
    "default_threads",
]

#: Why a model has no int8 path when nothing more specific is known.
NO_INT8 = "it has no int8 encoder; make one with `twinnet quantize MODEL_DIR IMAGES_DIR`"


@dataclass(frozen=True)
class Runtime:
    """The resolved execution plan of one :class:`~twinnet.infer.twin.Twin`.

    Attributes:
        device: where the model runs.
        bf16: the float encoder's weights and activations in bfloat16 (head stays fp32).
        channels_last: NHWC memory format for the encoder.
        draft: JPEGs may decode at reduced scale (never below the network input).
        threads: CPU threads of the encoder: torch's intra-op threads, or with ``int8``
            its engine's (torch then runs on one thread: see :func:`resolve_runtime`).
        int8: comparisons run the model directory's int8 encoder (OpenVINO or ONNX
            Runtime); the float
            encoder above is kept for Grad-CAM.
    """

    device: torch.device
    bf16: bool
    channels_last: bool
    draft: bool
    threads: int
    int8: bool = False

    @property
    def precision(self) -> str:
        """``int8``, ``bf16`` or ``fp32``: what the encoder computes in."""
        if self.int8:
            return "int8"
        return "bf16" if self.bf16 else "fp32"

    @property
    def fast(self) -> bool:
        """True when the encoder differs from the plain fp32 forward (its own prepared copy)."""
        return self.bf16 or self.channels_last


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty where it does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions and oneDNN can use them."""
    flags = cpu_flags()
    if not ({"avx512_bf16", "amx_bf16"} & flags):
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch
        return True


def cpu_has_int8_dot() -> bool:
    """True when the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX).

    Without them ONNX Runtime's uint8 x int8 kernels can saturate intermediate sums, so
    ``auto`` does not pick int8 there (``int8`` can still be asked for).
    """
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


#: torch's intra-op threads as the process started, before any Twin set them.
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


def default_threads() -> int:
    """torch's own default, capped at the CPUs this process may run on (containers, taskset)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    return max(1, min(_TORCH_DEFAULT_THREADS, usable))


def resolve_runtime(
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    draft: bool = False,
    int8_unavailable: str | None = NO_INT8,
) -> Runtime:
    """Turn the user's ``device``/``precision``/``threads`` into a :class:`Runtime`.

    ``int8_unavailable`` is None when the model has a usable int8 encoder, else the reason
    it has not: ``int8`` is then refused with that reason and ``auto`` uses a float path.
    With int8, the int8 engine and decoding get the threads and torch (normalising, the head,
    Grad-CAM's float encoder) runs on one: torch's OpenMP threads spin after each operation,
    and on 2 cores they took a core from the int8 encoder and from decoding, so one pair
    took 45 ms instead of 34.

    ``threads`` sets torch's process-wide intra-op thread count when given; otherwise the
    count is only lowered when torch would use more threads than the CPUs available.
    ``draft`` lets large JPEGs decode at reduced scale. It is off by default: it moves the
    preprocessed pixels of a drafted photo by 0.4 to 0.9 grey levels on average, which on
    real photos changed decisions more often than bf16 does (see docs/inference.md).
    """
    if precision not in PRECISIONS:
        raise TwinnetError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise TwinnetError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TwinnetError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    if threads is not None:
        if threads < 1:
            raise TwinnetError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(int(threads))
    else:
        wanted = default_threads()
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)
    if dev.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = cpu_has_native_bf16()
    if precision == "bf16" and not native and dev.type == "cuda":
        raise TwinnetError("this GPU does not support bfloat16; use precision='fp32'")
    if precision == "int8" and (int8_unavailable or dev.type != "cpu"):
        why = int8_unavailable or "the int8 encoder runs on the CPU; use --device cpu"
        raise TwinnetError(f"precision int8 is not available for this model: {why}")
    int8 = precision == "int8" or (
        precision == "auto" and int8_unavailable is None and dev.type == "cpu"
        and cpu_has_int8_dot()
    )  # fmt: skip
    bf16 = precision == "bf16" or (precision in ("auto", "int8") and native)
    fast = precision != "fp32"
    count = torch.get_num_threads()
    if int8:
        torch.set_num_threads(1)
    return Runtime(
        device=dev,
        bf16=bf16,
        channels_last=fast,
        draft=bool(draft),
        threads=count,
        int8=int8,
    )


def _fold_batchnorms(module: nn.Module) -> None:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into that conv, in place.

    torchvision ResNets name the pairs ``conv1/bn1`` ... and ``downsample.0/.1``, and the stem
    is ``0``/``1`` of the encoder ``Sequential``; matching by order inside each parent covers
    all of them.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    children = list(module.named_children())
    for (name_a, a), (name_b, b) in zip(children, children[1:], strict=False):
        if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
            setattr(module, name_a, fuse_conv_bn_eval(a, b))
            setattr(module, name_b, nn.Identity())
    for _, child in module.named_children():
        _fold_batchnorms(child)


def fast_encoder(encoder: nn.Module, runtime: Runtime) -> nn.Module:
    """A copy of ``encoder`` prepared for ``runtime``; the original is left untouched."""
    enc = copy.deepcopy(encoder).eval()
    if not runtime.fast:
        return enc.to(runtime.device)
    _fold_batchnorms(enc)
    if runtime.bf16:
        enc = enc.to(torch.bfloat16)
    enc = enc.to(runtime.device)
    if runtime.channels_last:
        enc = enc.to(memory_format=torch.channels_last)
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc
