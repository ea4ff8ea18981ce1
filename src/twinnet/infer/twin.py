"""``Twin``: compare, explain, embed and search with a trained twin model, in process.

Every other way of running a model (the CLI, the TorchServe handler, the SageMaker
container, the app) calls this class, so decoding, preprocessing and the fast path are
written once. A comparison is split where the cost is: the encoder (almost all of it) runs
once per distinct image and its output is cached by the hash of the image's bytes; the
head (cheap) runs for every pairing. For a cosine model the cache holds each image's
embedding (a few hundred bytes) and scoring a gallery is one matrix product; for a concat
model it holds feature maps, which the pair head needs. Grad-CAM always needs feature maps.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from twinnet.core.artifacts import load_model_dir, read_spec
from twinnet.core.calibration import sigmoid
from twinnet.core.imaging import (
    ImageSource,
    build_transforms,
)
from twinnet.core.model import TwinModel
from twinnet.core.result import CompareResult, Hit
from twinnet.core.spec import ModelSpec
from twinnet.data.items import IMAGE_SUFFIXES, list_images
from twinnet.errors import ImageError, TwinnetError
from twinnet.infer import explain
from twinnet.infer.cache import EmbeddingCache
from twinnet.infer.features import FeaturePipeline
from twinnet.infer.int8 import Int8Encoder, choose_engine, int8_path, int8_unavailable
from twinnet.infer.runtime import NO_INT8, Runtime, fast_encoder, resolve_runtime

__all__ = ["Twin", "Hit", "CompareResult", "IMAGE_SUFFIXES", "list_images"]

#: Pairs per head pass in a search.
HEAD_BATCH = 512


def _is_single(src: object) -> bool:
    return isinstance(
        src, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)
    ) or hasattr(src, "read")


def _reusable(src: ImageSource) -> ImageSource:
    """A file object's bytes (it can be read only once); other inputs as they are."""
    if hasattr(src, "read") and not isinstance(src, Image.Image):
        try:
            return src.read()  # type: ignore[union-attr]
        except (OSError, ValueError):  # unreadable: the usual path reports it
            return src
    return src


def _margin(logits: torch.Tensor) -> np.ndarray:
    """``logit_same - logit_different`` per row, float64."""
    lg = logits.detach().float().cpu().numpy().astype(np.float64)
    return lg[:, 1] - lg[:, 0]


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        h.update(name.encode())
        flat = t.detach().cpu().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()


class Twin(FeaturePipeline):
    """A twin model ready to compare images, with its preprocessing, fast path and cache.

    Build one with :meth:`load` (a model directory) or :meth:`from_model` (a model in memory,
    e.g. right after training). Methods are safe to call from several threads at once.

    Args:
        model: the twin model; put in eval mode and moved to the runtime's device.
        spec: its spec, which fixes the preprocessing and the decision threshold.
        runtime: the execution plan from :func:`twinnet.infer.runtime.resolve_runtime`.
        cache_mb: size of the feature-map cache; 0 turns caching off.
        int8: the int8 encoder, required when ``runtime.int8``; comparisons run it, and
            Grad-CAM runs the float encoder.
    """

    def __init__(
        self,
        model: TwinModel,
        spec: ModelSpec,
        runtime: Runtime,
        cache_mb: float = 256,
        int8: Int8Encoder | None = None,
    ) -> None:
        if runtime.int8 and int8 is None:
            raise TwinnetError("an int8 runtime needs the model's int8 encoder")
        self.spec = spec
        self.runtime = runtime
        self.int8 = int8 if runtime.int8 else None
        self.model = model.eval().to(runtime.device)
        self.head = self.model.head
        # The fp32 path uses the model as given, so it is exactly a plain PyTorch forward.
        self.encoder = (
            fast_encoder(self.model.encoder, runtime) if runtime.fast else self.model.encoder
        )
        self.preprocess = build_transforms(spec, fast_resize=runtime.fast)
        self.cache = EmbeddingCache(cache_mb)
        plan = {
            "arch": spec.arch,
            "image_size": spec.image_size,
            "resize_method": spec.resize_method,
            "mean": spec.mean,
            "std": spec.std,
            "precision": runtime.precision,
            "draft": runtime.draft,
            "device": runtime.device.type,
        }
        if spec.has_embeddings and spec.readout != "projection":  # earlier models keep theirs
            plan["readout"] = spec.readout
        if self.int8 is not None:  # two engines round differently: each has its features
            plan["int8"] = spec.quantization.get("sha256")
            plan["int8_engine"] = self.int8.engine
        h = hashlib.blake2b(json.dumps(plan, sort_keys=True).encode(), digest_size=8)
        h.update(_weights_digest(self.model.encoder).encode())
        if spec.has_embeddings:  # cached embeddings depend on the projection too
            h.update(_weights_digest(self.model.head).encode())
        self._namespace = h.hexdigest()

    @property
    def fingerprint(self) -> str:
        """Identifies weights, preprocessing and precision: the cache keys' namespace.

        A concat head is not part of it, since the cache then holds encoder outputs only;
        a cosine head's projection is, since its embeddings are cached. The calibration is
        not: it maps scores, not images. Memory layout (channels-last) is not either: it
        changes speed, not values, so ``precision="auto"`` on a CPU without bf16 and
        ``precision="fp32"`` name the same model.
        """
        return self._namespace

    # ----------------------------------------------------------------- constructors
    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike,
        device: str = "auto",
        precision: str = "auto",
        cache_mb: float = 256,
        threads: int | None = None,
        draft: bool = False,
        int8_engine: str | None = None,
    ) -> Twin:
        """Load a model directory.

        Args:
            model_dir: a directory with ``twinnet.json`` and safetensors weights.
            device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
            precision: ``auto`` (the int8 encoder when the directory has one and the CPU has
                VNNI; else bf16 where the hardware has native bf16), ``int8``, ``bf16`` or
                ``fp32`` (exactly the plain PyTorch forward).
            cache_mb: feature-map cache size in MB.
            threads: torch CPU threads (process-wide); default: torch's, capped at usable CPUs.
            draft: decode large JPEGs at reduced scale (faster, slightly different pixels).
            int8_engine: what runs an int8 encoder: ``auto`` (OpenVINO where ``twinnet
                quantize`` measured it, else ONNX Runtime), ``openvino`` or ``onnxruntime``;
                default: ``TWINNET_INT8_ENGINE``, else ``auto``.
        """
        spec = read_spec(model_dir)
        why = (
            int8_unavailable(model_dir, spec, int8_engine)
            if precision in ("auto", "int8")
            else NO_INT8
        )
        runtime = resolve_runtime(device, precision, threads, draft, int8_unavailable=why)
        int8 = None
        if runtime.int8:  # loads in the background while torch loads the float model
            engine = choose_engine(spec.quantization, int8_engine)[0] or "onnxruntime"
            int8 = Int8Encoder(int8_path(model_dir, spec), runtime.threads, engine)
        model, spec = load_model_dir(model_dir, device="cpu")
        twin = cls(model, spec, runtime, cache_mb=cache_mb, int8=int8)
        if int8 is not None:
            int8.wait()
        return twin

    @classmethod
    def from_model(
        cls,
        model: TwinModel,
        spec: ModelSpec,
        device: str = "cpu",
        precision: str = "auto",
        cache_mb: float = 256,
        threads: int | None = None,
        draft: bool = False,
    ) -> Twin:
        """Wrap a model already in memory (it is put in eval mode; do not train it meanwhile)."""
        runtime = resolve_runtime(device, precision, threads, draft)
        return cls(model, spec, runtime, cache_mb=cache_mb)

    # ----------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        """The model's name, as servers publish it."""
        return self.spec.name

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def precision(self) -> str:
        """``int8``, ``bf16`` or ``fp32``: what the encoder computes in."""
        return self.runtime.precision

    def __repr__(self) -> str:
        engine = f", int8_engine={self.int8.engine}" if self.int8 is not None else ""
        return (
            f"Twin(name={self.name!r}, arch={self.spec.arch}, size={self.spec.image_size}, "
            f"device={self.device.type}, precision={self.precision}{engine})"
        )

    @property
    def has_embeddings(self) -> bool:
        """True for cosine models: each image has an embedding, and pairs are scored by cosine."""
        return self.spec.has_embeddings

    def _head(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Logits (N, 2) in fp32 from two batches of feature maps, or of embeddings (cosine)."""
        with torch.inference_mode():
            if left.dim() == 2:  # embeddings
                return self.head.logits((left.float() * right.float()).sum(dim=1))
            return self.head(torch.cat([left.float(), right.float()], dim=1))

    # ----------------------------------------------------------------- public API
    def embed(self, images: ImageSource | Iterable[ImageSource]) -> torch.Tensor:
        """Embeddings of one image or a list, fp32 on the CPU; cached.

        A cosine model gives its L2-normalised embeddings (N, D): the cosine of two rows is
        the pair's score. A concat model has no per-image embedding and gives its encoder
        feature maps (N, C, h, w), as :meth:`feature_maps` does.
        """
        items = self._items(images, "embed")
        feats = self._features(items, [None] * len(items), embeddings=self.has_embeddings)
        return torch.stack([f.float() for f in feats]).cpu()  # type: ignore[union-attr]

    def feature_maps(self, images: ImageSource | Iterable[ImageSource]) -> torch.Tensor:
        """Encoder feature maps (N, C, h, w), fp32 on the CPU, of one image or a list; cached."""
        items = self._items(images, "feature_maps")
        feats = self._features(items, [None] * len(items))
        return torch.stack([f.float() for f in feats]).cpu()  # type: ignore[union-attr]

    @staticmethod
    def _items(images: ImageSource | Iterable[ImageSource], what: str) -> list[ImageSource]:
        items = [images] if _is_single(images) else list(images)  # type: ignore[list-item]
        if not items:
            raise TwinnetError(f"{what}() needs at least one image")
        return items

    def compare(
        self,
        left: ImageSource,
        right: ImageSource,
        cam: bool = False,
        threshold: float | None = None,
    ) -> CompareResult:
        """Are ``left`` and ``right`` the same class? With ``cam``, also their Grad-CAM maps.

        Inputs may be paths, encoded bytes, binary file objects or PIL images. Raises
        ImageError (with ``field`` ``left`` or ``right``) for an input that is not an image.
        ``threshold`` overrides the model's calibrated threshold for this call.
        """
        return self._compare_pairs([(left, right)], cam, collect=False, threshold=threshold)[0]  # type: ignore[return-value]

    def compare_batch(
        self,
        pairs: Sequence[tuple[ImageSource, ImageSource]],
        cam: bool = False,
        return_exceptions: bool = False,
        threshold: float | None = None,
    ) -> list[CompareResult] | list[CompareResult | ImageError]:
        """Compare many pairs in one pass; the same results as :meth:`compare` on each.

        Distinct images are encoded once, in batches, and reused from the cache; the head
        runs once over all pairs.

        Args:
            pairs: ``(left, right)`` inputs.
            cam: also compute Grad-CAM maps.
            return_exceptions: put a bad pair's ImageError in its place instead of raising,
                so one bad request in a server batch fails alone.
            threshold: overrides the model's calibrated threshold for these pairs.
        """
        return self._compare_pairs(list(pairs), cam, collect=return_exceptions, threshold=threshold)

    def _compare_pairs(
        self,
        pairs: list[tuple[ImageSource, ImageSource]],
        cam: bool,
        collect: bool,
        threshold: float | None = None,
    ) -> list[CompareResult | ImageError]:
        if threshold is None:
            threshold = self.spec.threshold
        elif not 0.0 < float(threshold) < 1.0:
            raise TwinnetError(f"threshold must lie strictly between 0 and 1, got {threshold}")
        sources: list[ImageSource] = []
        for n, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TwinnetError(f"pair {n} must be a (left, right) tuple")
            sources.extend(pair)
        fields = ["left", "right"] * len(pairs)
        # Grad-CAM needs a float encoder's feature maps; with an int8 encoder the verdict
        # still comes from it, so asking for maps never changes the answer.
        split_cam = cam and self.int8 is not None
        if split_cam:  # the float encoder reads the inputs a second time
            sources = [_reusable(src) for src in sources]
            pairs = list(zip(sources[0::2], sources[1::2], strict=True))
        feats = self._features(
            sources, fields, collect=True,
            embeddings=self.has_embeddings and (split_cam or not cam),
        )  # fmt: skip
        if not collect:
            for i, f in enumerate(feats):
                if isinstance(f, ImageError):
                    if len(pairs) == 1:  # a fresh exception: ``feats`` must not hold it
                        raise ImageError(str(f), field=f.field) from None
                    raise ImageError(f"pair {i // 2}: {f}", field=f.field) from None
        results: list[CompareResult | ImageError | None] = [None] * len(pairs)
        good = []
        for n in range(len(pairs)):
            fl, fr = feats[2 * n], feats[2 * n + 1]
            if isinstance(fl, ImageError):
                results[n] = fl
            elif isinstance(fr, ImageError):
                results[n] = fr
            else:
                good.append(n)
        if good:
            left = torch.stack([feats[2 * n] for n in good])  # type: ignore[misc]
            right = torch.stack([feats[2 * n + 1] for n in good])  # type: ignore[misc]
            if split_cam:
                logits = self._head(left, right)
                fl, fr = self._float_maps([pairs[n] for n in good])
                _, cam_l, cam_r = explain.grad_cam(self.head, fl, fr)
                cam_l, cam_r = cam_l.cpu().numpy(), cam_r.cpu().numpy()
            elif cam:
                logits, cam_l, cam_r = explain.grad_cam(self.head, left, right)
                cam_l, cam_r = cam_l.cpu().numpy(), cam_r.cpu().numpy()
            else:
                logits, cam_l, cam_r = self._head(left, right), None, None
            logits = logits.float().cpu().numpy()
            for j, n in enumerate(good):
                results[n] = CompareResult.from_logits(
                    logits[j].tolist(),
                    threshold=float(threshold),
                    model=self.name,
                    cam_left=None if cam_l is None else cam_l[j].astype(np.float32),
                    cam_right=None if cam_r is None else cam_r[j].astype(np.float32),
                )
        return results  # type: ignore[return-value]

    def _float_maps(
        self, pairs: list[tuple[ImageSource, ImageSource]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The float encoder's feature maps of the left and of the right images."""
        sources = [src for pair in pairs for src in pair]
        feats = self._features(sources, ["left", "right"] * len(pairs), float_path=True)
        return torch.stack(feats[0::2]), torch.stack(feats[1::2])  # type: ignore[arg-type]

    def scores(
        self, query: ImageSource, gallery: str | os.PathLike | Sequence[ImageSource]
    ) -> np.ndarray:
        """Probability that each gallery image shows the query's class, in gallery order.

        The query is the left image of every pair. This is the scoring that N-way one-shot
        evaluation uses, so evaluation and search share one code path.
        """
        return sigmoid(self.margins(query, gallery))

    def margins(
        self, query: ImageSource, gallery: str | os.PathLike | Sequence[ImageSource]
    ) -> np.ndarray:
        """``logit_same - logit_different`` of the query against each gallery image (float64).

        The log-odds behind :meth:`scores`: the same order, but they never round to a tie at
        probability 1.0, so rankings and ROC figures stay exact for confident models.
        """
        items = self._gallery(gallery)
        if not items:
            return np.zeros(0)
        fields = ["query"] + [None] * len(items)
        feats = self._features([query, *items], fields, embeddings=self.has_embeddings)
        q = feats[0]
        if self.has_embeddings:  # one matrix product over the cached embeddings
            cos = torch.stack(feats[1:]) @ q  # type: ignore[arg-type,operator]
            return _margin(self._logits_of_cosine(cos))
        out = []
        for start in range(0, len(items), HEAD_BATCH):
            right = torch.stack(feats[1 + start : 1 + start + HEAD_BATCH])  # type: ignore[arg-type]
            left = q.unsqueeze(0).expand(right.shape[0], *q.shape)  # type: ignore[union-attr]
            out.append(_margin(self._head(left, right)))
        return np.concatenate(out)

    def _logits_of_cosine(self, cos: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.head.logits(cos.float())

    def search(
        self,
        query: ImageSource,
        gallery: str | os.PathLike | Sequence[ImageSource],
        top_k: int | None = 5,
    ) -> list[Hit]:
        """Rank gallery images by the probability that they show the query's class.

        Args:
            query: the image to look for.
            gallery: a folder (searched recursively for images) or a sequence of inputs.
            top_k: how many hits to return; None for all.
        """
        if top_k is not None and top_k < 1:
            raise TwinnetError(f"top_k must be at least 1, got {top_k}")
        items = self._gallery(gallery)
        margins = self.margins(query, items)
        probs = sigmoid(margins)
        order = sorted(range(len(items)), key=lambda i: (-margins[i], i))
        if top_k is not None:
            order = order[:top_k]
        return [Hit(index=i, item=items[i], probability=float(probs[i])) for i in order]

    @staticmethod
    def _gallery(gallery: str | os.PathLike | Sequence[ImageSource]) -> list[Any]:
        if isinstance(gallery, (str, os.PathLike)):
            items: list[Any] = list_images(gallery)
            if not items:
                raise TwinnetError(
                    f"{os.fspath(gallery)} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            return items
        return list(gallery)

    def overlay(self, image: ImageSource, cam: np.ndarray, alpha: float = 0.5) -> Image.Image:
        """The Grad-CAM heatmap blended over the original image, at its own aspect ratio."""
        return explain.overlay(self.decode(image), cam, self.spec.resize_method, alpha=alpha)
