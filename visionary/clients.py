"""The per-process client cache.

Storage and model clients hold connection pools: they are made once per worker
process (per distinct configuration) and reused by every request, never made per
request. Settings are read on each call, which costs microseconds and lets a
changed environment take effect without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from visionary.settings import Settings
from visionary.storage import Gallery


@dataclass(eq=False)
class Clients:
    settings: Settings
    _closers: list = field(default_factory=list, repr=False)

    @cached_property
    def gallery(self) -> Gallery:
        """The gallery; raises `not_configured` (uncached) while storage is not set."""
        gallery = Gallery.from_settings(self.settings.require_storage())
        self._closers.append(gallery.close)
        return gallery

    async def close(self) -> None:
        for close in self._closers:
            await close()
        self._closers.clear()


_cache: dict[Settings, Clients] = {}


def current() -> Clients:
    """The clients for the settings in force now."""
    settings = Settings.from_env()
    clients = _cache.get(settings)
    if clients is None:
        clients = _cache[settings] = Clients(settings)
    return clients


async def close_all() -> None:
    """Close every cached client (the local host and tests call this on shutdown)."""
    while _cache:
        _, clients = _cache.popitem()
        await clients.close()
