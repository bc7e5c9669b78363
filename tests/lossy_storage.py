"""A loopback proxy in front of Azurite that loses answers.

Storage may apply a write and the answer still never reach the app (a dropped connection,
Azure's 500 OperationTimedOut, "may have succeeded"). The storage SDK then retries the same
request, and storage answers the retry as a conflict with the write it has already made.
`lose_answer` makes that happen on purpose: the matching request goes on to Azurite, and
the app gets a 500 in place of Azurite's answer; with `meanwhile`, another writer acts before
that 500 goes out. `delay_answer` holds Azurite's answer back instead: the write is made at
once, and its answer may come after the app has given up. `drop` never passes the request on.
A test waits for what it arranged with `settled`, not for a fixed time: on a slow machine a
held answer goes out later than its delay says.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import ClientSession, web

from tests.azurite import ACCOUNT, KEY, Azurite, free_port

_HOP_BY_HOP = {"host", "transfer-encoding", "connection", "keep-alive", "content-length", "content-encoding"}


@dataclass
class _Loss:
    method: str
    path: re.Pattern[str]
    conditional: bool | None  # only writes with If-Match (True), only without (False), either (None)
    count: int
    delay: float | None = None  # None: the answer is lost; else it comes this many seconds late
    meanwhile: Callable[[], Awaitable[object]] | None = None  # runs before a lost answer's 500
    dropped: bool = False  # the request never reaches Azurite
    held: bool = False  # the request reaches Azurite `delay` seconds late


class LossyStorage:
    def __init__(self, azurite: Azurite) -> None:
        self.azurite = azurite
        self.port = free_port()
        self.losses: list[_Loss] = []
        self.lost: list[str] = []  # "METHOD path" of each answer lost
        self.seen: list[str] = []  # "METHOD path?query" of each request, in the order they came
        self.made: list[str] = []  # "METHOD path?query status" of each request Azurite answered, as it did
        self._playing = 0  # requests matched to a loss whose answer has not yet gone out
        self._answers_held = 0  # answers Azurite gave that were held back (`delay_answer`), so far
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )

    def lose_answer(
        self,
        method: str,
        path: str,
        conditional: bool | None = None,
        count: int = 1,
        meanwhile: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Apply the next `count` requests like these, and answer each with a 500 instead
        (after `meanwhile`: what another writer does before the app hears back)."""
        self.losses.append(_Loss(method, re.compile(path), conditional, count, meanwhile=meanwhile))

    def drop(self, method: str, path: str, seconds: float, count: int = 1) -> None:
        """Keep the next `count` requests like these from Azurite, and answer each 500 `seconds` later."""
        self.losses.append(_Loss(method, re.compile(path), None, count, delay=seconds, dropped=True))

    def hold(self, method: str, path: str, seconds: float, count: int = 1) -> None:
        """Keep the next `count` requests like these on the way `seconds`: Azurite makes each then,
        whether or not the app still waits for it."""
        self.losses.append(_Loss(method, re.compile(path), None, count, delay=seconds, held=True))

    def delay_answer(
        self, method: str, path: str, seconds: float, conditional: bool | None = None, count: int = 1
    ) -> None:
        """Apply the next `count` requests like these at once, and answer each `seconds` late."""
        self.losses.append(_Loss(method, re.compile(path), conditional, count, seconds))

    async def settled(self, within: float = 20.0) -> None:
        """Wait until every loss arranged so far has met all its requests and sent every answer
        (a held request has reached Azurite, a late answer has gone out)."""
        await self._until(lambda: not self._playing and not any(loss.count for loss in self.losses), within)

    async def answer_held(self, within: float = 20.0) -> None:
        """Wait until Azurite has made a request whose answer is held back (`delay_answer`)."""
        await self._until(lambda: self._answers_held > 0, within)

    async def _until(self, done: Callable[[], bool], within: float) -> None:
        deadline = time.monotonic() + within
        while not done():
            if time.monotonic() > deadline:
                to_come = [f"{loss.method} {loss.path.pattern}" for loss in self.losses if loss.count]
                raise AssertionError(f"not in {within} s: {self._playing} in play, to come: {to_come}")
            await asyncio.sleep(0.01)

    async def start(self) -> LossyStorage:
        self._session = ClientSession(auto_decompress=False)
        application = web.Application(client_max_size=64 * 1024 * 1024)
        application.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(application, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()

    def _loss_for(self, request: web.Request) -> _Loss | None:
        for loss in self.losses:
            conditional = "If-Match" in request.headers
            if (
                loss.count > 0
                and loss.method == request.method
                and loss.path.search(request.path)
                and loss.conditional in (None, conditional)
            ):
                loss.count -= 1
                return loss
        return None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(f"{request.method} {request.path_qs}")
        loss = self._loss_for(request)
        playing = loss is not None  # until its answer goes out: what `settled` waits for
        self._playing += playing
        try:
            return await self._answer(request, body, loss)
        finally:
            self._playing -= playing

    async def _answer(self, request: web.Request, body: bytes, loss: _Loss | None) -> web.StreamResponse:
        assert self._session is not None
        if loss is not None and loss.held:
            await asyncio.sleep(loss.delay or 0)
            loss = None
        if loss is not None and loss.dropped:
            await asyncio.sleep(loss.delay or 0)
            self.lost.append(f"{request.method} {request.path}")
            return _timed_out()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method, f"{self.azurite.blob_endpoint.rsplit('/', 1)[0]}{request.path_qs}",
            headers=headers, data=body or None, allow_redirects=False,
            skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding", "Accept"),
        ) as answer:
            data = await answer.read()
            self.made.append(f"{request.method} {request.path_qs} {answer.status}")
            if loss is not None and loss.delay is not None:
                self._answers_held += 1
                await asyncio.sleep(loss.delay)
            elif loss is not None:
                if loss.meanwhile is not None:
                    await loss.meanwhile()
                self.lost.append(f"{request.method} {request.path}")
                return _timed_out()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=answer.status, body=data, headers=out)


def _timed_out() -> web.Response:
    return web.Response(
        status=500, text="<Error><Code>OperationTimedOut</Code></Error>",
        headers={"x-ms-error-code": "OperationTimedOut"},
    )
