"""Reads that ask the same thing at the same time share one call.

A burst of visitors opening the gallery asks for its first page many times over, and each
List Blobs answer costs the app about 18 ms of CPU (the storage SDK deserializing 50 blobs
of XML): 64 at once queued for over a second on the one event loop. Sharing is safe for
freshness one way only: a caller joins a call that has not begun, never one under way, so
what it gets was read after it asked, as if it had made the call itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SharedReads(Generic[K, T]):
    """`read(key)` for many callers: those that ask while a call for the key is under way
    wait for the next one, which serves them all."""

    def __init__(self, read: Callable[[K], Awaitable[T]]) -> None:
        self._read = read
        self._waiting: dict[K, list[asyncio.Future[T]]] = {}
        self._readers: dict[K, asyncio.Task[None]] = {}

    async def get(self, key: K) -> T:
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(answer)
        if key not in self._readers:
            self._readers[key] = asyncio.create_task(self._serve(key))
        return await answer  # a caller that gives up cancels its own future, no one else's

    async def _serve(self, key: K) -> None:
        """Call `read` for those waiting on `key`, batch after batch, until none are left."""
        waiting: list[asyncio.Future[T]] = []
        try:
            while waiting := self._waiting.pop(key, []):
                try:
                    result = await self._read(key)
                except Exception as error:  # each caller hears it, as if it had called alone
                    for answer in waiting:
                        if not answer.done():
                            answer.set_exception(error)
                else:
                    for answer in waiting:
                        if not answer.done():
                            answer.set_result(result)
        finally:  # cancelled (the process shuts down): so are the callers still waiting
            for answer in [*waiting, *self._waiting.pop(key, [])]:
                answer.cancel()
            del self._readers[key]
