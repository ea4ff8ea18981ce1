"""Rejected requests leave nothing behind: no reference cycles, no growth of traced memory.

A long-lived server process holds millions of objects, so Python's full garbage collection
runs rarely; anything a rejected request leaves in a reference cycle (an exception kept as
a value, whose traceback pins the frames holding the request's bytes) stays for hours. The
tests turn the cyclic collector off, as it effectively is in such a process, and check that
reference counting alone frees every request.
"""

from __future__ import annotations

import gc
import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from twinnet.contract.service import Row, TwinService
from twinnet.infer.twin import Twin

pytestmark = pytest.mark.unit

MULTIPART = {"Content-Type": "multipart/form-data; boundary=x"}
#: Requests of each kind; with the payloads below, a leak of one payload per request would
#: grow traced memory by about 16 MB.
REQUESTS = 400
#: Traced growth allowed over all requests of one kind (caches, interned strings).
SLACK = 256 * 1024


def _photo(seed: int, side: int = 96) -> bytes:
    """A noisy JPEG of about 20 KB, so a leaked payload is plain to see."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def service(random_cosine_dir, tmp_path_factory):
    from twinnet.data.datasets import make_shapes_dataset

    gallery = make_shapes_dataset(
        tmp_path_factory.mktemp("gallery"), classes=3, per_class=2, size=64
    )
    twin = Twin.load(random_cosine_dir, device="cpu", precision="fp32", cache_mb=0)
    from twinnet.index import GalleryIndex

    index = GalleryIndex.build(twin, gallery, tmp_path_factory.mktemp("index") / "idx")
    return TwinService(twin, gallery=index)


def _kinds() -> dict[str, dict]:
    a, b = _photo(1), _photo(2)
    return {
        "truncated image": {"left": a[: len(a) // 3], "right": b},
        "missing field": {"left": a},
        "bad cam value": {"left": a, "right": b, "cam": "__import__('os')"},
        "not an image": {"left": b"%PDF-1.4" + a, "right": b},
        "truncated query": {"query": a[: len(a) // 3]},
        "query and pair": {"query": a, "left": a, "right": b},
        "bad top_k": {"query": a, "top_k": "1e9"},
    }


def _rows(fields: dict, n: int) -> list[Row]:
    # a fresh copy of every payload, as every request brings its own bytes
    return [Row({k: bytes(v) if isinstance(v, bytes) else v for k, v in fields.items()}, MULTIPART)
            for _ in range(n)]  # fmt: skip


@pytest.mark.parametrize("kind", list(_kinds()))
def test_a_rejected_request_leaves_no_reference_cycle(service, kind):
    fields = _kinds()[kind]
    for batch in (1, 3):  # alone, and in a batch with a good pair
        good = Row({"left": _photo(1), "right": _photo(2)}, MULTIPART)
        rows = _rows(fields, 1) + [good] * (batch - 1)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            replies = service.handle(rows)
            gc.collect()
            left = list(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert replies[0].status in (400, 413), replies[0]
        assert [r.status for r in replies[1:]] == [200] * (len(rows) - 1)
        assert left == [], f"{kind}: {len(left)} objects in cycles, e.g. {left[:5]}"


@pytest.mark.parametrize("kind", list(_kinds()))
def test_traced_memory_returns_to_its_baseline_after_rejected_requests(service, kind):
    fields = _kinds()[kind]
    service.handle(_rows(fields, 20))  # warm: lazy imports, logging, caches
    gc.collect()
    gc.disable()  # as good as off in a long-lived server: reference counting must do it all
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(REQUESTS // 4):
            replies = service.handle(_rows(fields, 4))
            assert all(400 <= r.status < 500 for r in replies)
        del replies
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    assert grown < SLACK, (
        f"{kind}: traced memory grew by {grown / 1024:.0f} KB over {REQUESTS} requests"
    )
