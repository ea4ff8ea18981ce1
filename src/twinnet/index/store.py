"""The index directory on disk: its files, atomic replacement, and the writers' lock.

::

  INDEX_DIR/
    index.json       kind, search parameters, measured recall, the model's fingerprint and path
    model.json       the model's twinnet.json when the index was written (threshold, calibration)
    gallery.sqlite   table images: id, path, label, blake2b (of the image's bytes)
    vectors.npy      the embeddings (N, D) float32, rows in id order
    faiss.index      the FAISS index over them

A new version of the directory is written beside it and swapped in with two renames, so a
failure while writing leaves the previous version as it was.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twinnet.core.spec import ModelSpec
from twinnet.errors import TwinnetError
from twinnet.index.vectors import require_faiss

__all__ = [
    "paths_under",
    "FILES",
    "FORMAT_VERSION",
    "Stored",
    "read",
    "write",
    "writer_lock",
    "old_versions",
    "generation",
]

FORMAT_VERSION = 1
META, SPEC, TABLE, VECTORS, FAISS = (
    "index.json",
    "model.json",
    "gallery.sqlite",
    "vectors.npy",
    "faiss.index",
)
#: Every file of one index version, as shipped in an archive.
FILES = (META, SPEC, TABLE, VECTORS, FAISS)


@dataclass(frozen=True)
class Stored:
    """One version of an index: every array is in id order, and nothing in it changes.

    Writers build a new ``Stored`` and swap it in, so a reader that holds one searches a
    consistent gallery without taking a lock.
    """

    meta: dict[str, Any]
    spec: ModelSpec
    ids: np.ndarray
    paths: list[str]
    labels: list[str]
    hashes: list[str]
    vectors: np.ndarray
    index: Any

    def __len__(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def class_count(self) -> int:
        """How many classes the gallery holds."""
        return len(set(self.labels))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (ids are kept sorted)."""
        return np.searchsorted(self.ids, ids)


def old_versions(path: Path) -> list[Path]:
    """Previous versions left beside ``path`` by a swap that was cut short."""
    return sorted(path.parent.glob(f".{path.name}.old-*"))


def _missing(path: Path) -> TwinnetError:
    left = old_versions(path)
    if left:
        return TwinnetError(
            f"{path} is missing, but an interrupted update left the previous index at "
            f"{left[-1]}; rename it back to {path}"
        )
    return TwinnetError(
        f"{path} is not a gallery index (no {META}); build one with "
        "`twinnet index build MODEL_DIR GALLERY_DIR --out INDEX_DIR`"
    )


def read(path: Path) -> Stored:
    """Load every part of the index at ``path``; vectors are memory-mapped."""
    faiss = require_faiss()
    if not (path / META).is_file():
        raise _missing(path)
    try:
        meta = json.loads((path / META).read_text())
        spec = ModelSpec.from_dict(json.loads((path / SPEC).read_text()))
    except (OSError, ValueError) as exc:
        raise TwinnetError(f"{path} holds an unreadable index ({exc}); build it again") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise TwinnetError(
            f"{path} has index format {version!r}; this twinnet reads up to {FORMAT_VERSION}. "
            "Upgrade twinnet or build the index again."
        )
    uri = (path / TABLE).resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute("SELECT id, path, label, blake2b FROM images ORDER BY id").fetchall()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vectors = np.load(path / VECTORS, mmap_mode="r", allow_pickle=False)
    index = faiss.read_index(str(path / FAISS))
    if len(vectors) != len(ids) or index.ntotal != len(ids):
        raise TwinnetError(
            f"{path} is inconsistent ({len(ids)} table rows, {len(vectors)} vectors, "
            f"{index.ntotal} indexed); build it again"
        )
    return Stored(
        meta,
        spec,
        ids,
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        vectors,
        index,
    )


def _write_table(file: Path, stored: Stored) -> None:
    with contextlib.closing(sqlite3.connect(file)) as db:
        db.execute(
            "CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT NOT NULL, "
            "label TEXT NOT NULL, blake2b TEXT NOT NULL)"
        )
        db.execute("CREATE INDEX images_label ON images (label)")
        db.executemany(
            "INSERT INTO images VALUES (?, ?, ?, ?)",
            zip(stored.ids.tolist(), stored.paths, stored.labels, stored.hashes, strict=True),
        )
        db.commit()


def _write_files(folder: Path, stored: Stored) -> None:
    faiss = require_faiss()
    (folder / SPEC).write_text(json.dumps(stored.spec.to_dict(), indent=2) + "\n")
    _write_table(folder / TABLE, stored)
    np.save(folder / VECTORS, np.ascontiguousarray(stored.vectors, dtype=np.float32))
    faiss.write_index(stored.index, str(folder / FAISS))
    # Last, so a directory with index.json is complete.
    (folder / META).write_text(json.dumps(stored.meta, indent=2) + "\n")


def write(path: Path, stored: Stored) -> None:
    """Write ``stored`` as the index at ``path``, replacing any previous version atomically.

    Everything is written to a temporary directory beside ``path`` first; only a complete
    new version is swapped in. Refuses to replace a folder that is not an index.
    """
    if path.exists() and not (path / META).is_file() and any(path.iterdir()):
        raise TwinnetError(f"{path} exists and is not a gallery index; choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        _write_files(tmp, stored)
        _swap(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sibling(path: Path, what: str) -> Path:
    """A new empty directory beside ``path``, with the umask's permissions (mkdtemp's are 0700)."""
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{what}-{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise TwinnetError(f"cannot create a temporary directory beside {path}")  # pragma: no cover


def _swap(new: Path, path: Path) -> None:
    """Put the directory ``new`` at ``path``; the old version is moved aside, then deleted."""
    if not path.exists():
        os.replace(new, path)
        return
    old = _sibling(path, "old")
    os.replace(path, old)  # an empty directory is replaced
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Hold the lock that lets one process at a time update the index at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    with open(lock, "a+b") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
            yield
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TwinnetError(
                f"another process is updating {path}; try again when it has finished"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def generation(path: Path) -> int | None:
    """The version counter of the index on disk, or None when there is none."""
    try:
        return int(json.loads((path / META).read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def paths_under(paths: Sequence[str], target: str | os.PathLike) -> np.ndarray:
    """Which stored paths are ``target`` (as given or resolved) or lie under it."""
    given = os.fspath(target)
    full = str(Path(target).resolve())
    prefixes = tuple(p.rstrip(os.sep) + os.sep for p in (given, full))
    return np.array([p in (given, full) or p.startswith(prefixes) for p in paths], dtype=bool)
