"""The write side of a gallery index: embedding a folder, and new versions of an index.

Every function here returns a new :class:`~twinnet.index.store.Stored` and leaves its input
as it was, so readers of the current version are never disturbed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twinnet.core.spec import ModelSpec
from twinnet.core.version import __version__
from twinnet.data.items import check_images, scan_folder
from twinnet.index import store, vectors

if TYPE_CHECKING:
    from twinnet.infer.twin import Twin

__all__ = ["Update", "embed_folder", "model_info", "new_version", "appended", "retuned", "now"]

#: Images embedded per call while building or adding.
EMBED_CHUNK = 256


@dataclass(frozen=True)
class Update:
    """What a build or an add did: images added, and images left out (already in, unreadable)."""

    added: int
    duplicates: int = 0
    unreadable: int = 0


def blake2b_file(path: Path) -> str:
    """BLAKE2b of a file's bytes: the same picture under another name is the same image."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def now() -> str:
    """The time in UTC, as recorded in ``index.json``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def model_info(twin: Twin, model_dir: str | os.PathLike | None) -> dict[str, Any]:
    """What ``index.json`` records of the model: enough to reload it and to explain a mismatch."""
    spec = twin.spec
    return {
        "dir": None if model_dir is None else str(Path(model_dir).resolve()),
        "name": spec.name,
        "fingerprint": twin.fingerprint,
        "arch": spec.arch,
        "image_size": spec.image_size,
        "embedding_dim": spec.embedding_width,  # what the index stores
        "precision": twin.precision,
        "int8_engine": twin.int8.engine if twin.int8 is not None else None,
        "device": twin.device.type,
    }


def embed_folder(
    twin: Twin, folder: str | os.PathLike, labels: str, known: set[str]
) -> tuple[np.ndarray, tuple[list[str], list[str], list[str]], Update]:
    """Embeddings of the new, readable labelled images under ``folder``.

    Returns the embeddings, their (paths, labels, hashes), and what was skipped.
    """
    items = scan_folder(folder, labels)
    seen = set(known)
    fresh, hashes, duplicates = [], [], 0
    for i, file in enumerate(items.files):
        digest = blake2b_file(file)
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        fresh.append(i)
        hashes.append(digest)
    sub = items.subset(fresh)
    digest_of = dict(zip(sub.files, hashes, strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        readable, _ = check_images(sub)
    files = readable.files
    dim = twin.spec.embedding_width
    chunks = [
        twin.embed(files[i : i + EMBED_CHUNK]).numpy() for i in range(0, len(files), EMBED_CHUNK)
    ]
    emb = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    found = (
        [str(Path(f).resolve()) for f in files],
        [readable.classes[c] for c in readable.labels],
        [digest_of[f] for f in files],
    )
    return emb.astype(np.float32), found, Update(len(files), duplicates, len(sub) - len(files))


def appended(
    s: store.Stored,
    index: Any,
    ids: np.ndarray,
    emb: np.ndarray,
    paths: list[str],
    labels: list[str],
    hashes: list[str],
    spec: ModelSpec,
    tuning: tuple[dict[str, Any], float | None, int],
) -> store.Stored:
    """``s`` with new rows appended, and the search effort and recall the add measured."""
    meta = dict(s.meta, next_id=int(ids[-1]) + 1 if len(ids) else s.meta["next_id"])
    new = store.Stored(
        meta,
        spec,
        np.concatenate([s.ids, ids]),
        s.paths + paths,
        s.labels + labels,
        s.hashes + hashes,
        np.concatenate([np.asarray(s.vectors), emb]),
        index,
    )
    return retuned(new, spec, *tuning)


def retuned(
    s: store.Stored, spec: ModelSpec, params: dict[str, Any], recall: float | None, queries: int
) -> store.Stored:
    """``s`` with the search effort and recall measured while its index was (re)built.

    Nothing measured (an add too small to hold an image out) keeps the recall recorded.
    """
    meta = dict(s.meta, params=params)
    if queries or "recall_at_10" not in s.meta:
        meta.update(recall_at_10=recall, recall_queries=queries)
    return replace(s, meta=meta, spec=spec)


def new_version(
    emb: np.ndarray,
    paths: list[str],
    labels: list[str],
    hashes: list[str],
    *,
    spec: ModelSpec,
    kind: str,
    model: dict[str, Any],
    label_source: str = "folder",
) -> store.Stored:
    """A first version of an index of ``emb``: its kind chosen, its recall measured."""
    concrete, reason = vectors.choose_kind(kind, len(emb))
    meta = {
        "format_version": store.FORMAT_VERSION,
        "kind": concrete,
        "kind_reason": reason,
        "params": {},
        "labels": label_source,
        "model": model,
        "generation": 0,
        "next_id": 0,
        "created": now(),
        "twinnet": __version__,
    }
    ids = np.arange(len(emb), dtype=np.int64)
    params: dict[str, Any] = {}
    index, recall, queries = vectors.create(concrete, emb, ids, params)
    empty = store.Stored(meta, spec, ids[:0], [], [], [], emb[:0], index)
    return appended(empty, index, ids, emb, paths, labels, hashes, spec, (params, recall, queries))
