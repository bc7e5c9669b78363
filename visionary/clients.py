"""The per-process client cache.

Storage and model clients hold connection pools: they are made once per worker
process (per distinct configuration) and reused by every request, never made per
request. Settings are read on each call (microseconds): a changed environment
gets clients of its own, and the earlier ones stay open until `close_all`, as
requests may still be using them. On Azure a settings change restarts the worker
anyway. Model code (openai, Pillow, httpx) is imported here on first use, so the
app starts fast.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING

from visionary.allocator import keep_freed_pages
from visionary.guards import DailyCap, Guards, IdempotencyLedger
from visionary.settings import Settings
from visionary.storage import Gallery, StoredImage

if TYPE_CHECKING:
    from openai import AsyncOpenAI

    from visionary.images import ImageProvider
    from visionary.suggestions import SuggestionProvider


@dataclass(eq=False)
class Clients:
    settings: Settings
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list, repr=False)

    @cached_property
    def gallery(self) -> Gallery:
        """The gallery; raises `not_configured` (uncached) while storage is not set."""
        gallery = Gallery.from_settings(self.settings.require_storage())
        self._closers.append(gallery.close)
        return gallery

    @cached_property
    def guards(self) -> Guards:
        storage = self.settings.require_storage()
        system = self.gallery.system_container(storage.system_container)
        cap = self.settings.max_images_per_day
        models = self.settings.models
        # A live owner holds its claim for at most the model deadline and four storage calls (the
        # claim, the cap's slot, the upload, the answer's record), each within its timeout; a
        # claim older than that, and a minute's margin, lost its owner mid-generation.
        stale_after = timedelta(seconds=models.deadline_seconds + 4 * storage.timeout_seconds + 60)
        return Guards(
            cap=DailyCap(system, cap, timeout=storage.timeout_seconds) if cap is not None else None,
            ledger=IdempotencyLedger(
                system,
                stale_after=stale_after,
                timeout=storage.timeout_seconds,
                readable=StoredImage.is_record,
                late_writes=self.gallery.late_writes,  # cancelled when the gallery closes
            ),
        )

    @cached_property
    def images(self) -> ImageProvider:
        models = self.settings.require_models()
        keep_freed_pages()  # pictures of megabytes pass through this process from now on
        if models.provider == "offline":
            from visionary.offline import OfflineImages

            return OfflineImages()
        import httpx

        from visionary.images import DOWNLOAD_TIMEOUT, ModelImages

        downloads = httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True)
        self._closers.append(downloads.aclose)
        return ModelImages(
            self._model_client, models.image_target, downloads, models.deadline_seconds, models.timeout_seconds
        )

    @cached_property
    def suggestions(self) -> SuggestionProvider:
        models = self.settings.require_models()
        if models.provider == "offline":
            from visionary.offline import OfflineSuggestions

            return OfflineSuggestions()
        from visionary.suggestions import ChatSuggestions

        return ChatSuggestions(self._model_client, models.chat_target, models.deadline_seconds)

    @cached_property
    def _model_client(self) -> AsyncOpenAI:
        """One SDK client (and connection pool) shared by images and suggestions."""
        from visionary.models import open_service

        service = open_service(self.settings.models)
        self._closers.append(service.close)
        return service.client

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
