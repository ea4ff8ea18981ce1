"""The FAISS side of a gallery index: index kinds, search, removal and measured recall.

Embeddings are unit-norm, so the inner product is the cosine and every kind searches by
inner product. ``flat`` is exact; ``ivf`` and ``hnsw`` are approximate, so their search
effort (``nprobe``, ``ef_search``) is tuned at build time on a sample of the gallery until
recall@10 against exact search reaches :data:`TARGET_RECALL`, and that recall is recorded.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import TwinnetError

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
    "tune",
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
    return "hnsw", (
        f"approximate inner-product search; auto: {count:,} images, more than {AUTO_FLAT_MAX:,}"
    )


def _ivf_lists(count: int) -> int:
    """About 4 * sqrt(N) lists, with enough training vectors for each."""
    return max(1, min(round(4 * math.sqrt(count)), count // 39))


def create(kind: str, vectors: np.ndarray, ids: np.ndarray, params: dict[str, Any]) -> Any:
    """A new index of ``kind`` holding ``vectors`` under ``ids``.

    ``params`` carries what the kind needs to be rebuilt the same way; missing entries are
    filled in (``nlist`` for IVF, ``m`` and ``ef_construction`` for HNSW).
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
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return index


def extend(index: Any, vectors: np.ndarray, ids: np.ndarray) -> Any:
    """A copy of ``index`` with ``vectors`` added; the original stays as it was for readers."""
    faiss = require_faiss()
    out = faiss.clone_index(index)
    if len(vectors):
        out.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return out


def without(
    index: Any,
    kind: str,
    params: dict[str, Any],
    drop: np.ndarray,
    keep: tuple[np.ndarray, np.ndarray],
) -> Any:
    """A copy of ``index`` without the ids ``drop``; ``keep`` is (vectors, ids) of the rest.

    HNSW graphs cannot delete, so an HNSW index is rebuilt from the vectors that remain.
    """
    if kind == "hnsw":
        return create(kind, keep[0], keep[1], dict(params))
    faiss = require_faiss()
    out = faiss.clone_index(index)
    out.remove_ids(np.ascontiguousarray(drop, dtype=np.int64))
    return out


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


def tune(
    index: Any, kind: str, params: dict[str, Any], vectors: np.ndarray, ids: np.ndarray
) -> tuple[float | None, int]:
    """Set the search effort of an approximate index so recall@10 reaches the target.

    Queries are a fixed sample of the gallery's own vectors; the truth is exact inner-product
    search over all of them. Updates ``params`` in place and returns (recall@10, queries);
    a flat index returns (None, 0): it is exact.
    """
    if kind == "flat" or not len(vectors):
        return None, 0
    faiss = require_faiss()
    rng = np.random.default_rng(0)
    n_q = min(RECALL_QUERIES, len(vectors))
    pick = np.sort(rng.choice(len(vectors), n_q, replace=False))
    queries = np.ascontiguousarray(vectors[pick], dtype=np.float32)
    k = min(10, len(vectors))
    base = np.ascontiguousarray(vectors, dtype=np.float32)
    _, rows = faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)
    truth = np.where(rows >= 0, ids[np.clip(rows, 0, None)], -1)
    if kind == "hnsw":
        name, steps = "ef_search", HNSW_EF_STEPS
    else:
        nlist = int(params["nlist"])
        name = "nprobe"
        steps = tuple(sorted({min(nlist, 2**i) for i in range(nlist.bit_length() + 1)}))
    recall = 0.0
    for value in steps:
        params[name] = int(value)
        recall = _recall(search(index, kind, params, queries, k)[1], truth)
        if recall >= TARGET_RECALL:
            break
    return recall, n_q
