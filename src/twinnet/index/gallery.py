"""``GalleryIndex``: who is this? Open-set identification over a cosine model's embeddings.

A gallery is a labelled image folder. Each image's embedding goes into a FAISS index once;
a query is embedded and searched, its neighbours are grouped by class (the best cosine of
each class, so ten photos of one person do not fill the top-k), and each class's cosine
becomes the probability of "same" through the model's own calibration. When no class
reaches the model's threshold the answer is "unknown".
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twinnet.core.spec import ModelSpec
from twinnet.errors import DataError, TwinnetError
from twinnet.index import build as builder
from twinnet.index import store, vectors
from twinnet.index.answers import (
    MAX_NEIGHBOURS,
    MIN_NEIGHBOURS,
    NEIGHBOURS_PER_CLASS,
    Identification,
    Match,
    aggregate,
    check_top_k,
    gallery_probability,
    identification_threshold,
    require_cosine,
)
from twinnet.index.build import Update
from twinnet.index.export import write_parquet
from twinnet.infer.twin import Twin

if TYPE_CHECKING:
    from twinnet.core.imaging import ImageSource
    from twinnet.infer.twin import Twin

__all__ = ["GalleryIndex", "from_embeddings"]


class GalleryIndex:
    """A gallery of labelled embeddings on disk, searched for open-set identification.

    Open one with :meth:`open`, make one with :meth:`build`. Reads
    (:meth:`identify`, :meth:`neighbours`, ``len``) may run from many threads while one
    thread adds or removes: every change builds a new immutable version, writes it to disk
    atomically, then swaps it in, so a reader always sees one whole version.
    """

    def __init__(self, path: Path, stored: store.Stored, twin: Twin | None = None) -> None:
        self.path = path
        self._stored = stored
        self._twin: Twin | None = None
        self._twin_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.last_update = Update(0)
        if twin is not None:
            self.attach(twin)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        twin: Twin | None = None,
        model_dir: str | os.PathLike | None = None,
    ) -> GalleryIndex:
        """Open the index at ``path``.

        Args:
            path: an index directory.
            twin: the model to embed queries with; it must be the one the index was built with.
                Default: loaded on first need from ``model_dir``.
            model_dir: the model directory, when it moved since the index was built.
        """
        stored = store.read(Path(path))
        require_cosine(stored.spec)
        if model_dir is not None:
            model = dict(stored.meta["model"], dir=str(Path(model_dir).resolve()))
            stored = replace(stored, meta=dict(stored.meta, model=model))
        return cls(Path(path), stored, twin)

    def attach(self, twin: Twin) -> None:
        """Use ``twin`` for queries, after checking it is the model the index was built with."""
        require_cosine(twin.spec)
        info = self._stored.meta["model"]
        if twin.fingerprint != info["fingerprint"]:
            now = builder.model_info(twin, None)
            keys = ("arch", "image_size", "embedding_dim", "precision", "device")
            built = ", ".join(f"{k} {info.get(k)}" for k in keys)
            given = ", ".join(f"{k} {now[k]}" for k in keys)
            raise TwinnetError(
                f"{self.path} was built with a different model or preprocessing "
                f"(fingerprint {info['fingerprint']}: {built}; this model: {twin.fingerprint}: "
                f"{given}). Load the model the index was built with, or rebuild the index with "
                "`twinnet index build MODEL_DIR GALLERY_DIR --out INDEX_DIR`."
            )
        self._twin = twin

    @property
    def twin(self) -> Twin:
        """The model that embeds queries; loaded from the recorded model directory on first use."""
        with self._twin_lock:
            if self._twin is None:
                self.attach(self._load_twin())
            return self._twin  # type: ignore[return-value]

    def _load_twin(self) -> Twin:
        info = self._stored.meta["model"]
        if not info.get("dir"):
            raise TwinnetError(
                f"{self.path} records no model directory; pass the model (--model DIR, or twin=)"
            )
        if not Path(info["dir"], "twinnet.json").is_file():
            raise TwinnetError(
                f"the model {info['dir']} that built {self.path} is gone; pass its new "
                "location (--model DIR, or model_dir=)"
            )
        # An int8 index recorded before there were two engines was built by ONNX Runtime.
        engine = info.get("int8_engine", "onnxruntime" if info["precision"] == "int8" else None)
        return Twin.load(
            info["dir"], device=info["device"], precision=info["precision"], int8_engine=engine
        )

    # ------------------------------------------------------------------ reading
    @property
    def spec(self) -> ModelSpec:
        """The model's spec: the attached model's, else the one recorded with the index."""
        return self._twin.spec if self._twin is not None else self._stored.spec

    @property
    def info(self) -> dict[str, Any]:
        """What ``twinnet index info`` prints: kind, sizes, recall, model."""
        s = self._stored
        meta = dict(s.meta)
        meta.update(
            path=str(self.path),
            count=len(s),
            classes=s.class_count,
            threshold=identification_threshold(self.spec, len(s)),
            pair_threshold=float(self.spec.threshold),
        )
        return meta

    def __len__(self) -> int:
        return len(self._stored)

    def labels(self) -> dict[str, int]:
        """Images per class."""
        counts: dict[str, int] = {}
        for label in self._stored.labels:
            counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items()))

    def neighbours(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosines and ids (Q, k) of each query embedding's nearest gallery images; id -1 pads."""
        s = self._stored
        q = self._check_queries(queries, s)
        k = max(1, min(int(k), len(s)))
        if not len(s):
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        return vectors.search(s.index, s.meta["kind"], s.meta["params"], q, k)

    def _check_queries(self, queries: np.ndarray, s: store.Stored) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        dim = s.meta["model"]["embedding_dim"]
        if q.ndim != 2 or q.shape[1] != dim:
            raise TwinnetError(f"query embeddings must have shape (N, {dim}), got {q.shape}")
        return q

    def identify(
        self, queries: ImageSource | Sequence[ImageSource], top_k: int = 5
    ) -> list[Identification]:
        """Who is in each query image? One :class:`Identification` per query, in order."""
        top_k = check_top_k(top_k)
        emb = self.twin.embed(queries).numpy()
        return self.identify_embeddings(emb, top_k)

    def identify_embeddings(self, embeddings: np.ndarray, top_k: int = 5) -> list[Identification]:
        """:meth:`identify` for query embeddings already computed (unit-norm, model's width)."""
        top_k = check_top_k(top_k)
        s = self._stored  # one version for the whole call
        spec = self.spec
        q = self._check_queries(embeddings, s)
        n = min(len(s), max(top_k * NEIGHBOURS_PER_CLASS, MIN_NEIGHBOURS))
        out = []
        cos, ids = self._search(s, q, n)
        threshold = identification_threshold(spec, len(s))
        for i in range(len(q)):
            best, wide = self._classes(s, cos[i], ids[i], top_k), n
            reachable = min(top_k, s.class_count)
            limit = min(len(s), max(n, MAX_NEIGHBOURS))
            while len(best) < reachable and wide < limit:  # a few classes filled the neighbours
                wide = min(limit, wide * 4)
                c, d = self._search(s, q[i : i + 1], wide)
                best = self._classes(s, c[0], d[0], top_k)
            out.append(self._answer(spec, best, threshold))
        return out

    @staticmethod
    def _search(s: store.Stored, q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        if not n:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        return vectors.search(s.index, s.meta["kind"], s.meta["params"], q, n)

    @staticmethod
    def _classes(
        s: store.Stored, cos: np.ndarray, ids: np.ndarray, top_k: int
    ) -> list[tuple[str, float, str]]:
        ok = ids >= 0
        rows = s.rows(ids[ok])
        return aggregate(cos[ok], [s.labels[r] for r in rows], [s.paths[r] for r in rows], top_k)

    @staticmethod
    def _answer(
        spec: ModelSpec, best: list[tuple[str, float, str]], threshold: float
    ) -> Identification:
        probs = gallery_probability(spec, np.array([b[1] for b in best]))
        matches = [
            Match(label, float(p), path, cos)
            for (label, cos, path), p in zip(best, probs, strict=True)
        ]
        known = bool(matches) and matches[0].probability >= threshold
        return Identification(known, matches, float(threshold), spec.name)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        twin: Twin,
        folder: str | os.PathLike,
        out: str | os.PathLike,
        labels: str = "folder",
        kind: str = "auto",
        model_dir: str | os.PathLike | None = None,
    ) -> GalleryIndex:
        """Embed every labelled image under ``folder`` and write a new index at ``out``.

        Args:
            twin: a cosine model.
            folder: the gallery: a labelled image folder.
            out: the index directory; an index already there is replaced atomically.
            labels: ``folder`` or ``regex:PATTERN``, as in training.
            kind: ``auto``, ``flat`` (exact), ``ivf`` or ``hnsw`` (approximate).
            model_dir: the model's directory, recorded so queries can load it later.
        """
        require_cosine(twin.spec)
        vectors.choose_kind(kind, 0)  # a bad kind fails before any encoding
        emb, found, update = builder.embed_folder(twin, folder, labels, set())
        if not len(emb):
            raise DataError(
                f"{folder} holds no readable labelled images (--labels {labels}; with "
                "'folder', each class's images go in a sub-folder named after the class)"
            )
        info = builder.model_info(twin, model_dir)
        new = builder.new_version(
            emb, *found, spec=twin.spec, kind=kind, model=info, label_source=labels
        )
        gallery = _write_new(Path(out), new)
        gallery.attach(twin)
        gallery.last_update = update
        return gallery

    def add(self, folder: str | os.PathLike, labels: str | None = None) -> Update:
        """Embed and add the images under ``folder`` that are not in the index yet.

        An image whose bytes (BLAKE2b) are already in is skipped before encoding, so adding
        a folder costs the encoder time of its new images only.
        """
        with self._write_lock, store.writer_lock(self.path):
            s = self._current_on_disk()
            labels = labels or s.meta.get("labels", "folder")
            emb, found, update = builder.embed_folder(self.twin, folder, labels, set(s.hashes))
            if emb.size:
                start = int(s.meta["next_id"])
                ids = np.arange(start, start + len(emb), dtype=np.int64)
                params = dict(s.meta["params"])
                index, recall, queries = vectors.extend(
                    s.index, s.meta["kind"], params, (emb, ids), (s.vectors, s.ids)
                )
                tuning = (params, recall, queries)
                self._commit(builder.appended(s, index, ids, emb, *found, self.spec, tuning))
            self.last_update = update
            return update

    def remove(self, label: str | None = None, path: str | os.PathLike | None = None) -> int:
        """Remove every image of class ``label``, or the image (or folder of images) ``path``.

        Returns how many were removed; raises when nothing matches, so a typo does not pass.
        """
        if (label is None) == (path is None):
            raise TwinnetError("remove needs exactly one of label or path")
        with self._write_lock, store.writer_lock(self.path):
            s = self._current_on_disk()
            if label is not None:
                drop = np.array([x == label for x in s.labels], dtype=bool)
                what = f"no image labelled {label!r}"
            else:
                drop = store.paths_under(s.paths, path)  # type: ignore[arg-type]
                what = f"no image at or under {path}"
            if not drop.any():
                raise TwinnetError(f"{what} in {self.path}")
            keep = ~drop
            kept = (np.asarray(s.vectors)[keep], s.ids[keep])
            params = dict(s.meta["params"])
            index, recall, queries = vectors.without(
                s.index, s.meta["kind"], params, s.ids[drop], kept
            )
            pick = np.flatnonzero(keep)
            new = replace(
                s,
                ids=kept[1],
                paths=[s.paths[i] for i in pick],
                labels=[s.labels[i] for i in pick],
                hashes=[s.hashes[i] for i in pick],
                vectors=kept[0],
                index=index,
            )
            self._commit(builder.retuned(new, self.spec, params, recall, queries))
            return int(drop.sum())

    def _current_on_disk(self) -> store.Stored:
        """This version, after checking no other process changed the index since it was read."""
        s = self._stored
        if store.generation(self.path) != s.meta["generation"]:
            raise TwinnetError(
                f"{self.path} changed on disk since it was opened (another process updated "
                "it); open it again and retry"
            )
        return s

    def _commit(self, new: store.Stored) -> None:
        meta = dict(new.meta, generation=int(new.meta["generation"]) + 1, updated=builder.now())
        new = replace(new, meta=meta)
        store.write(self.path, new)
        self._stored = replace(new, vectors=np.load(self.path / store.VECTORS, mmap_mode="r"))

    def export(self, out: str | os.PathLike) -> Path:
        """Write id, label, path and embedding of every image to a Parquet file."""
        return write_parquet(self._stored, Path(out))


def from_embeddings(
    out: str | os.PathLike,
    embeddings: np.ndarray,
    labels: Sequence[str],
    spec: ModelSpec,
    fingerprint: str,
    paths: Sequence[str] | None = None,
    kind: str = "auto",
    model_dir: str | os.PathLike | None = None,
) -> GalleryIndex:
    """An index of embeddings computed elsewhere (benchmarks, tests, other pipelines).

    ``fingerprint`` names the model that made them (``Twin.fingerprint``, at fp32 on the
    CPU); the images' bytes are unknown, so each row's hash is that of its vector.
    """
    require_cosine(spec)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[1] != spec.embedding_width or len(emb) != len(labels):
        raise TwinnetError(
            f"embeddings must have shape ({len(labels)}, {spec.embedding_width}), got {emb.shape}"
        )
    paths = list(paths) if paths is not None else [f"item-{i}" for i in range(len(emb))]
    hashes = [hashlib.blake2b(v.tobytes(), digest_size=32).hexdigest() for v in emb]
    model = {
        "dir": None if model_dir is None else str(Path(model_dir).resolve()),
        "name": spec.name,
        "fingerprint": fingerprint,
        "arch": spec.arch,
        "image_size": spec.image_size,
        "embedding_dim": spec.embedding_width,
        "precision": "fp32",
        "device": "cpu",
    }
    labels = [str(x) for x in labels]
    new = builder.new_version(emb, paths, labels, hashes, spec=spec, kind=kind, model=model)
    return _write_new(Path(out), new)


def _write_new(path: Path, new: store.Stored) -> GalleryIndex:
    """Write a first version at ``path`` (replacing any index there) and open it."""
    with store.writer_lock(path):
        # A rebuild gets a new generation, so processes holding the old one notice.
        new.meta["generation"] = (store.generation(path) or 0) + 1
        store.write(path, new)
    return GalleryIndex(path, new)
