"""Gallery index (FAISS) and open-set identification: which known class is this, if any?

``GalleryIndex.build(twin, folder, out)`` embeds a labelled
gallery once; ``GalleryIndex.open(out).identify(images)`` answers each query with its best
classes, their calibrated probabilities, and ``known: false`` when none reaches the
model's threshold (raised with the gallery's size, see :func:`identification_threshold`).
Needs a cosine model, and ``pip install 'twinnet[index]'``.
"""

from __future__ import annotations

from twinnet.index.answers import (
    MAX_TOP_K,
    Identification,
    Match,
    aggregate,
    check_top_k,
    identification_threshold,
)
from twinnet.index.build import Update
from twinnet.index.gallery import GalleryIndex, from_embeddings
from twinnet.index.vectors import AUTO_FLAT_MAX, KINDS, TARGET_RECALL

__all__ = [
    "GalleryIndex",
    "Identification",
    "Match",
    "Update",
    "aggregate",
    "check_top_k",
    "from_embeddings",
    "identification_threshold",
    "AUTO_FLAT_MAX",
    "KINDS",
    "MAX_TOP_K",
    "TARGET_RECALL",
]
