"""Figure 2: concurrency through the local host, one process.

64 simultaneous generateImage against a model that answers after 1.0 s: all 201, and the
wall time over the 1.0 s floor. Then 64 simultaneous getImages against one request's time:
64 visitors opening the gallery (the same first page, whose requests share List Blobs calls),
and 64 reading different pages (nothing to share).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp

from common import Azurite, Figure, ServedApp, app_env, free_port, ms, report, run
from tests.conftest import png_bytes
from model_server import ModelServerProcess

CONCURRENT = 64
MODEL_DELAY = 1.0
ROUNDS = 5


async def main() -> None:
    azurite = Azurite(free_port()).start()
    model = ModelServerProcess.start(image=png_bytes(7, size=64), delay=MODEL_DELAY)
    served = ServedApp.start(free_port(), app_env(azurite, OPENAI_API_KEY="sk-bench",
                                                  OPENAI_BASE_URL=f"{model.url}/v1"))
    try:
        # aiohttp for the load: the lightest client at hand, since it shares the two cores.
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(base_url=served.url, timeout=timeout) as http:
            processes = {"app": served.process.pid, "Azurite": azurite.process.pid}
            await _generations(http, processes)
            await _pages(http, processes)
    finally:
        served.stop()
        model.stop()
        azurite.stop()


async def _post(http: aiohttp.ClientSession, prompt: str) -> int:
    async with http.post("/api/generateImage", json={"prompt": prompt}) as answer:
        await answer.read()
        return answer.status


async def _generations(http: aiohttp.ClientSession, processes: dict[str, int]) -> None:
    await _post(http, "warm-up")  # first use loads openai
    cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    walls = []
    for round_ in range(ROUNDS):
        started = time.perf_counter()
        statuses = await asyncio.gather(*[_post(http, f"Round {round_} picture {i}") for i in range(CONCURRENT)])
        walls.append(time.perf_counter() - started)
        assert statuses == [201] * CONCURRENT, statuses
    wall = statistics.median(walls)
    cpu = ", ".join(
        f"{name} {(cpu_seconds(pid) - cpu_before[name]) / ROUNDS * 1000:.0f} ms" for name, pid in processes.items()
    )
    report(Figure(f"{CONCURRENT} simultaneous generateImage, model answers after {MODEL_DELAY:.1f} s",
                  f"{ms(wall)} (min {ms(min(walls))}, max {ms(max(walls))}), all 201",
                  f"floor {ms(MODEL_DELAY)}", wall / MODEL_DELAY, 1.5,
                  f"median of {ROUNDS} rounds; CPU a round: {cpu} (2 cores)"))


async def _pages(http: aiohttp.ClientSession, processes: dict[str, int]) -> None:
    """64 visitors opening the gallery at once (the same page), then 64 reading different pages."""
    async def page(query: str) -> str | None:
        async with http.get(f"/api/getImages?{query}") as answer:
            assert answer.status == 200
            return (await answer.json())["nextCursor"]

    # Cursors to 64 different pages of 50: the gallery holds the pictures generated above.
    cursors: list[str] = []
    while len(cursors) < CONCURRENT:
        cursor = await page("limit=4" + (f"&cursor={cursors[-1]}" if cursors else ""))
        assert cursor is not None, "too few pictures for 64 different pages"
        cursors.append(cursor)
    different = [f"limit=50&cursor={cursor}" for cursor in cursors]
    await _burst("the same page", ["limit=50"] * CONCURRENT, page, processes)
    await _burst("64 different pages", different, page, processes)


async def _burst(
    what: str, queries: list[str], page: Callable[[str], Awaitable[object]], processes: dict[str, int]
) -> None:
    for _ in range(3):
        await page(queries[0])
    singles, walls = [], []
    cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    for _ in range(ROUNDS):
        started = time.perf_counter()
        await page(queries[0])
        singles.append(time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*[page(query) for query in queries])
        walls.append(time.perf_counter() - started)
    single, wall = statistics.median(singles), statistics.median(walls)
    pages = ROUNDS * (len(queries) + 1)
    cpu = ", ".join(
        f"{name} {(cpu_seconds(pid) - cpu_before[name]) / pages * 1000:.1f} ms" for name, pid in processes.items()
    )
    report(Figure(f"{len(queries)} simultaneous getImages (limit 50), {what}", ms(wall), f"one request {ms(single)}",
                  wall / single, None, f"{wall / len(queries) * 1000:.1f} ms a page; CPU a page: {cpu}"))


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    run(main)
