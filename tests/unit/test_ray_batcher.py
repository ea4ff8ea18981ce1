"""The Ray replica's batcher: batches form when the model is free, answers reach their callers."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from twinnet.engines.ray.batcher import Batcher

pytestmark = pytest.mark.unit


def _model(calls: list[list[int]], seconds: float, fail_on: int | None = None):
    busy = threading.Lock()

    def handle(rows: list[int]) -> list[int]:
        assert busy.acquire(blocking=False), "two batches ran at once"
        try:
            calls.append(list(rows))
            time.sleep(seconds)
            if fail_on in rows:
                raise RuntimeError(f"row {fail_on} broke the batch")
            return [10 * r for r in rows]
        finally:
            busy.release()

    return handle


def test_rows_arriving_while_the_model_computes_form_the_next_full_batch():
    calls: list[list[int]] = []

    async def main():
        b = Batcher(_model(calls, 0.2), ThreadPoolExecutor(1), max_size=4, max_delay_s=0.01)
        first = asyncio.ensure_future(b(0))
        await asyncio.sleep(0.05)  # the first batch (alone: its wait is over) computes
        rest = [asyncio.ensure_future(b(i)) for i in range(1, 10)]
        return await asyncio.gather(first, *rest)

    answers = asyncio.run(main())
    assert [a for a, _ in answers] == [10 * i for i in range(10)]
    # While row 0 computed, 9 rows arrived: they went in full batches, not one by one.
    assert calls == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert [n for _, n in answers] == [1, 4, 4, 4, 4, 4, 4, 4, 4, 1]


def test_an_idle_model_waits_at_most_the_delay_for_more_rows():
    calls: list[list[int]] = []

    async def main():
        b = Batcher(_model(calls, 0.0), ThreadPoolExecutor(1), max_size=8, max_delay_s=0.1)
        t0 = time.perf_counter()
        a = asyncio.ensure_future(b(1))
        await asyncio.sleep(0.03)
        c = asyncio.ensure_future(b(2))
        out = await asyncio.gather(a, c)
        return out, time.perf_counter() - t0

    (one, two), took = asyncio.run(main())
    assert calls == [[1, 2]] and one == (10, 2) and two == (20, 2)
    assert 0.09 <= took < 1.0


def test_a_failing_batch_fails_its_rows_and_the_next_batch_is_answered():
    calls: list[list[int]] = []

    async def main():
        b = Batcher(_model(calls, 0.05, fail_on=3), ThreadPoolExecutor(1), 2, 0.0)
        bad = await asyncio.gather(b(3), return_exceptions=True)
        good = await b(4)
        return bad, good

    bad, good = asyncio.run(main())
    assert isinstance(bad[0], RuntimeError) and "row 3" in str(bad[0])
    assert good == (40, 1)


def test_a_cancelled_caller_is_left_out_of_its_batch():
    calls: list[list[int]] = []

    async def main():
        b = Batcher(_model(calls, 0.1), ThreadPoolExecutor(1), 4, 0.0)
        first = asyncio.ensure_future(b(0))
        await asyncio.sleep(0.02)
        gone = asyncio.ensure_future(b(1))
        kept = asyncio.ensure_future(b(2))
        await asyncio.sleep(0)
        gone.cancel()
        return await asyncio.gather(first, kept)

    assert asyncio.run(main()) == [(0, 1), (20, 1)]
    assert calls == [[0], [2]]


@pytest.mark.parametrize("size", [0, -3])
def test_batch_sizes_below_one_mean_one(size):
    assert Batcher(lambda rows: rows, ThreadPoolExecutor(1), size, 0.0).max_size == 1
