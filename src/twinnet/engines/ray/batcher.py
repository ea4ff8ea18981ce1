"""Dynamic batching that forms a batch when the model is free, as TorchServe's frontend does.

``@serve.batch`` closes a batch after its timeout whether or not the model can take it, so
under load batches queue up small behind the one computing (about 1.4 rows at 16 clients on
2 CPUs). Here one loop owns the model: while a batch computes, rows gather; when it is free,
the loop takes every waiting row (up to ``max_size``), waiting for more only until the oldest
row has waited ``max_delay_s``. One call of ``handle`` runs at a time, off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

__all__ = ["Batcher"]

R = TypeVar("R")
A = TypeVar("A")


class Batcher(Generic[R, A]):
    """``await batcher(row)`` answers ``(answer, batch size)``; rows are handled in batches.

    Args:
        handle: answers a list of rows with a list of answers in the same order (blocking).
        executor: where ``handle`` runs (one thread: one batch at a time).
        max_size: the most rows per batch.
        max_delay_s: the longest the oldest row waits for more before its batch starts.
    """

    def __init__(
        self,
        handle: Callable[[list[R]], list[A]],
        executor: Executor,
        max_size: int,
        max_delay_s: float,
    ) -> None:
        self.handle, self.executor = handle, executor
        self.max_size, self.max_delay_s = max(1, int(max_size)), max(0.0, float(max_delay_s))
        self._waiting: list[tuple[R, asyncio.Future, float]] = []
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    async def __call__(self, row: R) -> tuple[A, int]:
        loop = asyncio.get_running_loop()
        if self._arrived is None:
            self._arrived = asyncio.Event()
        future: asyncio.Future = loop.create_future()
        self._waiting.append((row, future, loop.time()))
        self._arrived.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = loop.create_task(self._run())
        return await future

    async def _next_batch(self) -> list[tuple[R, asyncio.Future, float]]:
        """Waiting rows, once there is a full batch or the oldest has waited long enough."""
        loop = asyncio.get_running_loop()
        assert self._arrived is not None
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._waiting[0][2] + self.max_delay_s
        while len(self._waiting) < self.max_size and (left := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break
        batch, self._waiting = self._waiting[: self.max_size], self._waiting[self.max_size :]
        return [entry for entry in batch if not entry[1].done()]  # cancelled: dropped

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                answers = await loop.run_in_executor(
                    self.executor, self.handle, [row for row, _, _ in batch]
                )
            except Exception as exc:  # every row of the batch gets the error
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future, _), ans in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result((ans, len(batch)))
