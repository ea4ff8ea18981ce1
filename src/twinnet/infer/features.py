"""From image sources to encoder features: decoding in a thread pool, batching, the cache.

:class:`FeaturePipeline` is the half of :class:`~twinnet.infer.twin.Twin` that turns inputs
(paths, bytes, file objects, PIL images) into feature maps or embeddings. Each distinct image
is decoded and encoded once: its features are cached by the hash of its bytes under the
model's fingerprint. A bad input is an :class:`~twinnet.errors.ImageError` naming its field;
one kept as a value holds no traceback, so no request's payload stays pinned by it.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import numpy as np
import torch
from PIL import Image

from twinnet.core.imaging import ImageSource, decode_image, read_bytes, source_name
from twinnet.errors import ImageError, detached
from twinnet.infer.cache import content_key

__all__ = ["FeaturePipeline", "ENCODE_BATCH", "DRAFT_OVERSAMPLE", "input_label"]

#: Images encoded per forward pass; bounds activation memory for large galleries.
ENCODE_BATCH = 16
#: JPEGs decode at reduced scale only while at least this many times the network input
#: remains, so the final resize still averages over several source pixels (at 1.5 the
#: preprocessed pixels move by under 1/255 on average; at 1.0, up to 3/255).
DRAFT_OVERSAMPLE = 1.5


def input_label(src: ImageSource, field: str | None) -> str:
    """How errors name an input: the field, and the path when there is one."""
    if field and isinstance(src, (str, os.PathLike)):
        return f"{field} image {os.fspath(src)}"
    return field or source_name(src)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _decode_pool(workers: int) -> ThreadPoolExecutor:
    """One process-wide pool for decoding, created on first use."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(
                max_workers=min(workers, 8), thread_name_prefix="twinnet-decode"
            )
        return _POOL


@dataclass
class _Job:
    """One call's inputs, its answers so far, and its cache misses grouped by key."""

    sources: list[ImageSource]
    fields: list[str | None]
    collect: bool
    embeddings: bool
    float_path: bool = False
    out: list[Any] = dataclass_field(default_factory=list)
    pending: dict[str, list[int]] = dataclass_field(default_factory=dict)
    payloads: dict[str, tuple[bytes | Image.Image, str, str | None]] = dataclass_field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        self.out = [None] * len(self.sources)


class FeaturePipeline:
    """Decoding, encoding and caching for :class:`~twinnet.infer.twin.Twin`, which sets
    ``spec``, ``runtime``, ``preprocess``, ``cache``, ``encoder``, ``head``, ``device`` and
    ``_namespace``."""

    spec: Any
    runtime: Any
    preprocess: Any
    cache: Any
    encoder: torch.nn.Module
    int8: Any
    head: torch.nn.Module
    device: torch.device
    _namespace: str

    def _key(self, src: ImageSource, label: str) -> tuple[str, bytes | Image.Image]:
        """The cache key of an input, and what to decode on a miss.

        A PIL image is keyed by its pixels as :func:`decode_image` leaves them (upright,
        alpha on white, RGB): its raw bytes alone leave out the palette, EXIF orientation
        and transparency, so different pictures would share an entry. On a miss the decoded
        image is what goes on to the network (decoding it again is a copy).
        """
        if isinstance(src, Image.Image):
            img = decode_image(src, label)
            h = hashlib.blake2b(f"pil:{img.mode}:{img.size}".encode(), digest_size=20)
            h.update(img.tobytes())
            return f"{self._namespace}:{h.hexdigest()}", img
        data = read_bytes(src, label)
        return content_key(self._namespace, data), data

    def decode(self, src: ImageSource, field: str | None = None) -> Image.Image:
        """Decode one input as the library does (EXIF, RGB, bomb cap); raises ImageError."""
        label = input_label(src, field)
        try:
            return decode_image(src, label)
        except ImageError as exc:
            exc.field = field
            raise

    def _decode(self, payload: bytes | Image.Image, label: str) -> Image.Image:
        """Decode for the network: at reduced JPEG scale when the runtime allows it."""
        side = math.ceil(self.spec.image_size * DRAFT_OVERSAMPLE)
        return decode_image(payload, label, draft=(side, side) if self.runtime.draft else None)

    def _decode_resized(self, item: tuple[bytes | Image.Image, str]) -> np.ndarray | ImageError:
        try:
            # Resizing here lets it run in the pool too; Preprocess.batch takes the pixels.
            return self.preprocess.pixels(self._decode(*item))
        except ImageError as exc:
            return detached(exc)  # kept as a value: no frames (and payloads) pinned

    def _decode_many(
        self, items: list[tuple[bytes | Image.Image, str]]
    ) -> list[np.ndarray | ImageError]:
        """Decode and resize several inputs, in parallel threads (PIL releases the GIL)."""
        if len(items) < 2 or self.runtime.threads < 2:
            return [self._decode_resized(item) for item in items]
        return list(_decode_pool(self.runtime.threads).map(self._decode_resized, items))

    def _encode(self, batch: torch.Tensor, float_path: bool = False) -> torch.Tensor:
        """Encoder feature maps of a normalised batch, in the runtime's storage dtype, NCHW.

        The int8 encoder runs when there is one, unless ``float_path`` asks for the float one.
        """
        if self.int8 is not None and not float_path:
            return self.int8(batch)
        x = batch.to(self.device)
        if self.runtime.bf16:
            x = x.to(torch.bfloat16)
        # fp32 keeps the plain NCHW layout so it is exactly a plain PyTorch forward.
        fmt = torch.channels_last if self.runtime.channels_last else torch.contiguous_format
        with torch.inference_mode():
            return self.encoder(x.contiguous(memory_format=fmt)).contiguous()

    def _embed_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings in fp32 of a batch of feature maps: the cosine head's projection."""
        with torch.inference_mode():
            return self.head.embed(feats.float())

    def _features(
        self,
        sources: Sequence[ImageSource],
        fields: Sequence[str | None],
        collect: bool = False,
        embeddings: bool = False,
        float_path: bool = False,
    ) -> list[torch.Tensor | ImageError]:
        """Feature maps (C, h, w), or with ``embeddings`` embeddings (D,), of each input.

        They come from the cache or are encoded in batches. With ``collect``, a bad input
        yields its ImageError in place instead of raising. ``float_path`` asks for the float
        encoder's maps where an int8 encoder would otherwise run (Grad-CAM needs them).
        """
        float_path = float_path and self.int8 is not None
        job = _Job(list(sources), list(fields), collect, embeddings, float_path)
        self._look_up(job)
        keys = list(job.pending)
        for start in range(0, len(keys), ENCODE_BATCH):
            self._encode_keys(job, keys[start : start + ENCODE_BATCH])
        for i, o in enumerate(job.out):
            if o is None:  # the same key appeared earlier as a cache hit
                raise AssertionError(f"input {i} was not resolved")  # pragma: no cover
        return job.out  # type: ignore[return-value]

    def _look_up(self, job: _Job) -> None:
        """Fill ``job.out`` from the cache; group the misses by key, each decoded once."""
        for i, (src, field) in enumerate(zip(job.sources, job.fields, strict=True)):
            label = input_label(src, field)
            try:
                key, payload = self._key(src, label)
                key = key + ":emb" if job.embeddings else key
                key = key + ":float" if job.float_path else key
            except ImageError as exc:
                exc.field = field
                if not job.collect:
                    raise
                job.out[i] = exc
                continue
            if key in job.pending:
                job.pending[key].append(i)
                continue
            hit = self.cache.get(key)
            if hit is not None:
                job.out[i] = hit
            else:
                job.pending[key] = [i]
                job.payloads[key] = (payload, label, field)

    def _encode_keys(self, job: _Job, keys: list[str]) -> None:
        """Decode, encode and cache one batch of misses; bad inputs become errors in place."""
        chunk, images = [], []
        decoded = self._decode_many([job.payloads[k][:2] for k in keys])
        for key, img in zip(keys, decoded, strict=True):
            if isinstance(img, ImageError):
                img.field = job.payloads[key][2]
                if not job.collect:  # a fresh exception: ``img`` stays free of this frame
                    raise ImageError(str(img), field=img.field) from None
                first = job.payloads[key][1]
                for i in job.pending[key]:  # the same bad bytes may sit in several places
                    label = input_label(job.sources[i], job.fields[i])
                    job.out[i] = ImageError(str(img).replace(first, label, 1), field=job.fields[i])
            else:
                images.append(img)
                chunk.append(key)
        if not chunk:
            return
        feats = self._encode(self.preprocess.batch(images), job.float_path)
        if job.embeddings:
            feats = self._embed_features(feats)
        for key, f in zip(chunk, feats, strict=True):
            f = f.clone()  # own storage: a slice would pin the whole batch in the cache
            self.cache.put(key, f)
            for i in job.pending[key]:
                job.out[i] = f
