"""Reads that ask the same thing at the same time share one call.

A burst of visitors opening the gallery asks for its first page many times over, and each
List Blobs answer costs the app about 18 ms of CPU (the storage SDK deserializing 50 blobs
of XML): 64 at once queued for over a second on the one event loop.

The rules, per key:
- A caller joins a call that has not begun, never one under way, so what it gets was read
  after it asked, as if it had made the call itself.
- Callers that come while a call is under way form the next batch. It begins when that call
  ends, or `max_wait` after the batch formed if the call is slower than that: a slow or
  stuck call must not hold every later visitor of the page until it times out.
- Every caller of a call hears its answer or its error.
- A caller that gives up cancels only its own wait. Once all of a call's callers have given
  up, the call is cancelled; if they gave up before it began, it is never made.
- If the call itself is cancelled (the host shutting down), its callers hear `cancelled()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass(eq=False)
class _Batch(Generic[T]):
    """The callers of one call, and the task that makes it."""

    task: asyncio.Task[None] = field(init=False)  # set as soon as the batch is made
    answers: list[asyncio.Future[T]] = field(default_factory=list)
    begun: bool = False  # past its wait: a call now made is under way, so its callers may stop it


class SharedReads(Generic[K, T]):
    """`read(key)` for many callers at once, each answered from a call begun after it asked."""

    def __init__(
        self,
        read: Callable[[K], Awaitable[T]],
        cancelled: Callable[[], Exception],
        max_wait: float = 0.05,
    ) -> None:
        self._read = read
        self._cancelled = cancelled  # what callers hear when their call is cancelled (shutdown)
        self._max_wait = max_wait
        self._open: dict[K, _Batch[T]] = {}  # per key, the batch taking callers
        self._latest: dict[K, asyncio.Task[None]] = {}  # per key, the last call begun, while under way

    async def get(self, key: K) -> T:
        batch = self._open.get(key)
        if batch is None or batch.task.done():  # done: cancelled before it began
            batch = self._open[key] = self._new_batch(key)
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(lambda answer: self._answer_done(batch, answer))
        batch.answers.append(answer)
        return await answer  # a caller that gives up cancels its own future, no one else's

    def _new_batch(self, key: K) -> _Batch[T]:
        batch: _Batch[T] = _Batch()
        batch.task = asyncio.create_task(self._serve(key, batch))
        batch.task.add_done_callback(lambda task: self._finish(key, batch, task))
        return batch

    async def _serve(self, key: K, batch: _Batch[T]) -> None:
        if (under_way := self._latest.get(key)) is not None:
            await asyncio.wait([under_way], timeout=self._max_wait)
        if self._open.get(key) is batch:
            del self._open[key]  # no caller joins from here on: later ones form the next batch
        batch.begun = True
        if _all_gave_up(batch):
            return
        self._latest[key] = batch.task
        try:
            result = await self._read(key)
        except Exception as error:  # each caller hears it, as if it had called alone
            for answer in batch.answers:
                if not answer.done():
                    answer.set_exception(error)
        else:
            for answer in batch.answers:
                if not answer.done():
                    answer.set_result(result)

    def _answer_done(self, batch: _Batch[T], answer: asyncio.Future[T]) -> None:
        """A caller stopped waiting; once all have, the call under way stops too."""
        if answer.cancelled() and batch.begun and _all_gave_up(batch):
            batch.task.cancel()

    def _finish(self, key: K, batch: _Batch[T], task: asyncio.Task[None]) -> None:
        """Whatever ended the call (cancelled too, even before it began), no caller is left waiting."""
        if self._open.get(key) is batch:
            del self._open[key]
        if self._latest.get(key) is task:
            del self._latest[key]
        for answer in batch.answers:
            if not answer.done():
                answer.set_exception(self._cancelled())


def _all_gave_up(batch: _Batch[T]) -> bool:
    return all(answer.cancelled() for answer in batch.answers)
