"""The FAISS side of a gallery index: index kinds, search, removal and measured recall.

Embeddings are unit-norm, so the inner product is the cosine and every kind searches by
inner product. ``flat`` is exact; ``ivf`` and ``hnsw`` are approximate, so their search
effort (``nprobe``, ``ef_search``) is tuned on a sample of the gallery until recall@10 against
exact search reaches :data:`TARGET_RECALL`, and that recall is recorded.

The sample is held out: it joins the index only after the effort is set. A query that is
already in the index finds itself, and in an HNSW graph its own links lead straight to its
neighbours, so recall measured that way overstates what a new photo gets (0.99 against 0.96
for new queries on 30,000 clustered vectors at ``ef_search`` 16).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from twinnet.errors import TwinnetError

#: An index, the recall@10 measured while tuning it (None: exact) and its query count.
Measured = tuple[Any, float | None, int]
_NONE = (np.zeros((0, 0), np.float32), np.zeros(0, np.int64))

__all__ = [
    "KINDS",
    "AUTO_FLAT_MAX",
    "TARGET_RECALL",
    "require_faiss",
    "choose_kind",
    "create",
    "extend",
    "without",
    "search",
]

#: What ``--kind`` accepts.
KINDS = ("auto", "flat", "ivf", "hnsw")
#: ``auto`` searches exactly up to this many vectors; beyond it an HNSW graph pays.
AUTO_FLAT_MAX = 100_000
#: Recall@10 against exact search that tuning aims for.
TARGET_RECALL = 0.95
#: Sample queries drawn from the gallery to measure recall.
RECALL_QUERIES = 200
#: HNSW graph degree and construction effort.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_STEPS = (16, 32, 64, 128, 256, 512, 1024)
#: IVF trains on at most this many vectors per list.
IVF_TRAIN_PER_LIST = 64


def require_faiss() -> Any:
    """Import faiss, or say how to install it."""
    try:
        import faiss
    except ImportError:
        raise TwinnetError(
            "gallery indexes need faiss: pip install 'twinnet[index]' (or pip install faiss-cpu)"
        ) from None
    return faiss


def choose_kind(kind: str, count: int) -> tuple[str, str]:
    """The concrete kind for ``kind`` at ``count`` vectors, and a sentence saying why."""
    if kind not in KINDS:
        raise TwinnetError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "flat":
        return "flat", "exact inner-product search, as asked"
    if kind != "auto":
        return kind, "approximate inner-product search, as asked"
    if count <= AUTO_FLAT_MAX:
        return (
            "flat",
            f"exact inner-product search; auto: {count:,} images, at most {AUTO_FLAT_MAX:,}",
        )
    # IVF over HNSW: at 1M vectors on 2 cores it builds in 46 s against 8.5 min and answers
    # as fast at the same recall (bench/index_speed.py).
    return "ivf", (
        f"approximate inner-product search (IVF); auto: {count:,} images, "
        f"more than {AUTO_FLAT_MAX:,}"
    )


def _ivf_lists(count: int) -> int:
    """About 4 * sqrt(N) lists, with enough training vectors for each."""
    return max(1, min(round(4 * math.sqrt(count)), count // 39))


def create(kind: str, vectors: np.ndarray, ids: np.ndarray, params: dict[str, Any]) -> Measured:
    """A new index of ``kind`` holding ``vectors`` under ``ids``, with its measured recall.

    ``params`` carries what the kind needs to be rebuilt the same way; missing entries are
    filled in (``nlist`` for IVF, ``m`` and ``ef_construction`` for HNSW) and the search
    effort is tuned from scratch.
    """
    faiss = require_faiss()
    dim = vectors.shape[1]
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    elif kind == "hnsw":
        params.setdefault("m", HNSW_M)
        params.setdefault("ef_construction", HNSW_EF_CONSTRUCTION)
        base = faiss.IndexHNSWFlat(dim, int(params["m"]), ip)
        base.hnsw.efConstruction = int(params["ef_construction"])
        index = faiss.IndexIDMap2(base)
    elif kind == "ivf":
        # IVF keeps ids itself and renumbers nothing on removal, so it is not wrapped.
        params.setdefault("nlist", _ivf_lists(len(vectors)))
        nlist = int(params["nlist"])
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, ip)
        rng = np.random.default_rng(0)
        n_train = min(len(vectors), nlist * IVF_TRAIN_PER_LIST)
        sample = vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))]
        if len(sample) < 39 * nlist:  # k-means wants 39 points a list; repeats change no mean
            sample = np.resize(sample, (39 * nlist, dim))
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    else:
        raise TwinnetError(f"unknown index kind {kind!r}")
    return index, *_populate(index, kind, params, (vectors, ids), _NONE)


def extend(
    index: Any,
    kind: str,
    params: dict[str, Any],
    new: tuple[np.ndarray, np.ndarray],
    old: tuple[np.ndarray, np.ndarray],
) -> Measured:
    """A copy of ``index`` (holding ``old``) with ``new`` added; the original stays as it was.

    The held-out sample comes from the new vectors, and an add never lowers the search
    effort: a larger gallery is not easier to search, and a small add gives few queries.
    """
    faiss = require_faiss()
    out = faiss.clone_index(index)
    return out, *_populate(out, kind, params, new, old, floor=True)


def without(
    index: Any,
    kind: str,
    params: dict[str, Any],
    drop: np.ndarray,
    keep: tuple[np.ndarray, np.ndarray],
) -> Measured:
    """A copy of ``index`` without the ids ``drop``; ``keep`` is (vectors, ids) of the rest.

    HNSW graphs cannot delete, so an HNSW index is rebuilt from the vectors that remain;
    an IVF index also drops its held-out sample, then takes it back once tuned.
    """
    if kind == "hnsw":
        return create(kind, keep[0], keep[1], params)
    faiss = require_faiss()
    out = faiss.clone_index(index)
    gone = drop
    stay, held = keep, (keep[0][:0], keep[1][:0])
    if kind != "flat":
        rows = _held_out(len(keep[1]))
        mask = np.ones(len(keep[1]), dtype=bool)
        mask[rows] = False
        held = (np.asarray(keep[0])[rows], keep[1][rows])
        stay = (np.asarray(keep[0])[mask], keep[1][mask])
        gone = np.concatenate([drop, held[1]])
    out.remove_ids(np.ascontiguousarray(gone, dtype=np.int64))
    return out, *_populate(out, kind, params, held, stay, held_out=len(held[1]))


def _search_params(kind: str, params: dict[str, Any], k: int) -> Any:
    faiss = require_faiss()
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(int(params.get("ef_search", 64)), k))
    if kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=int(params.get("nprobe", 1)))
    return None


def search(
    index: Any, kind: str, params: dict[str, Any], queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cosines and ids (Q, k) of each query's ``k`` nearest vectors, best first; id -1 pads.

    Search effort travels with the call, never set on the shared index, so concurrent
    searches with different ``k`` do not interfere.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    sp = _search_params(kind, params, k)
    if sp is None:
        return index.search(q, k)
    return index.search(q, k, params=sp)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


def _held_out(count: int, held_out: int | None = None) -> np.ndarray:
    """Rows of the fixed sample that is tuned on: up to RECALL_QUERIES, at most half of them."""
    n_q = min(RECALL_QUERIES, count // 2) if held_out is None else held_out
    return np.sort(np.random.default_rng(0).choice(count, n_q, replace=False))


def _exact(queries: np.ndarray, blocks: list[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """Ids (Q, k) of each query's ``k`` nearest vectors over several (vectors, ids) blocks."""
    faiss = require_faiss()
    cos, found = [], []
    for vecs, ids in blocks:
        if len(vecs):
            base = np.ascontiguousarray(vecs, dtype=np.float32)
            c, rows = faiss.knn(queries, base, min(k, len(vecs)), metric=faiss.METRIC_INNER_PRODUCT)
            cos.append(c)
            found.append(np.where(rows >= 0, ids[np.clip(rows, 0, None)], -1))
    order = np.argsort(-np.concatenate(cos, axis=1), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(np.concatenate(found, axis=1), order, axis=1)


def _populate(
    index: Any,
    kind: str,
    params: dict[str, Any],
    new: tuple[np.ndarray, np.ndarray],
    old: tuple[np.ndarray, np.ndarray],
    floor: bool = False,
    held_out: int | None = None,
) -> tuple[float | None, int]:
    """Add ``new`` to ``index`` (which holds ``old``), tuning an approximate kind's effort.

    A sample of ``new`` (``held_out`` of its rows, by default up to RECALL_QUERIES) is added
    only after the effort has been raised until the sample's recall@10 against exact search
    over the rest reaches the target. Updates ``params`` in place; returns
    (recall@10, queries), or (None, 0) when nothing was measured: a flat index is exact.
    """
    vecs = np.ascontiguousarray(new[0], dtype=np.float32)
    ids = np.ascontiguousarray(new[1], dtype=np.int64)
    rows = _held_out(len(ids), held_out) if kind != "flat" else np.zeros(0, np.int64)
    rest = np.ones(len(ids), dtype=bool)
    rest[rows] = False
    if rest.any():
        index.add_with_ids(vecs[rest], ids[rest])
    if not len(rows):
        return None, 0
    queries = vecs[rows]
    k = min(10, index.ntotal)  # at least 1: at most half of a block is held out
    truth = _exact(queries, [old, (vecs[rest], ids[rest])], k)
    if kind == "hnsw":
        name, steps = "ef_search", HNSW_EF_STEPS
    else:
        nlist = int(params["nlist"])
        name = "nprobe"
        steps = tuple(sorted({min(nlist, 2**i) for i in range(nlist.bit_length() + 1)}))
    if floor and name in params:
        steps = tuple(v for v in steps if v >= int(params[name])) or steps[-1:]
    recall = 0.0
    for value in steps:
        params[name] = int(value)
        recall = _recall(search(index, kind, params, queries, k)[1], truth)
        if recall >= TARGET_RECALL:
            break
    index.add_with_ids(queries, ids[rows])
    return recall, len(rows)
