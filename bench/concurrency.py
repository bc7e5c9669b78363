"""Figure 2: concurrency through the local host, one process.

64 simultaneous generateImage against a model that answers after 1.0 s: all 201, and the
wall time over the 1.0 s floor. Then 64 simultaneous getImages against one request's time.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

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
            await _generations(http, {"app": served.process.pid, "Azurite": azurite.process.pid})
            await _pages(http)
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


async def _pages(http: aiohttp.ClientSession) -> None:
    async def page() -> None:
        async with http.get("/api/getImages?limit=50") as answer:
            await answer.read()
            assert answer.status == 200

    singles, walls = [], []
    for _ in range(3):
        await page()
    for _ in range(ROUNDS):
        started = time.perf_counter()
        await page()
        singles.append(time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*[page() for _ in range(CONCURRENT)])
        walls.append(time.perf_counter() - started)
    single, wall = statistics.median(singles), statistics.median(walls)
    report(Figure(f"{CONCURRENT} simultaneous getImages (limit 50)", ms(wall), f"one request {ms(single)}",
                  wall / single, None, f"{wall / CONCURRENT * 1000:.1f} ms a page when {CONCURRENT} share the process"))


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    run(main)
