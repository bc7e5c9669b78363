"""What the benchmarks share: the servers they measure against, timing, and the result format.

Every figure is a ratio against a baseline measured in the same run, since this
machine is shared and noisy; medians, with min-max where it helps.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.azurite import Azurite, free_port  # noqa: E402
from tests.served import ROOT_ENV, ServedApp  # noqa: E402


@dataclass
class Figure:
    name: str
    ours: str
    baseline: str
    ratio: float | None
    bound: float | None  # the ratio must be at most this; None: reported only
    note: str = ""

    @property
    def within(self) -> bool | None:
        return None if self.bound is None or self.ratio is None else self.ratio <= self.bound


def report(figure: Figure) -> None:
    """One result line, read by bench/run.py."""
    print("RESULT " + json.dumps(asdict(figure)), flush=True)


@dataclass
class Timings:
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def __str__(self) -> str:
        return f"{ms(self.median)} (min {ms(min(self.samples))}, max {ms(max(self.samples))})"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def interleaved(
    calls: dict[str, Callable[[], Awaitable[object]]], runs: int, warmup: int = 3
) -> dict[str, Timings]:
    """Time several calls in turn, round after round, so drift on a noisy machine hits all alike.

    Each round takes the calls in a new order: a call that leaves a server busy (Azurite
    finishing its work after answering) must not always slow the same neighbour.
    """
    for call in calls.values():
        for _ in range(warmup):
            await call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = random.Random(runs)  # the same orders every run
    for _ in range(runs):
        for name, call in order.sample(list(calls.items()), len(calls)):
            started = time.perf_counter()
            await call()
            samples[name].append(time.perf_counter() - started)
    return {name: Timings(values) for name, values in samples.items()}


def app_env(azurite: Azurite, **settings: str) -> dict[str, str]:
    """Settings for an app process on Azurite, with a container of its own."""
    return {
        **ROOT_ENV,
        "VISIONARY_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "VISIONARY_CONTAINER": f"bench-{uuid.uuid4().hex[:12]}",
        **settings,
    }


def use_env(env: dict[str, str]) -> None:
    """Make this process's environment exactly `env` (for in-process measurements)."""
    os.environ.clear()
    os.environ.update(env)


def noise_png(size_bytes: int) -> bytes:
    """A PNG of about `size_bytes` that does not compress (random pixels)."""
    from PIL import Image

    side = int((size_bytes / 3) ** 0.5)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())


__all__ = ["Azurite", "ServedApp", "free_port"]
