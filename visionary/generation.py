"""generateImage: validate the request, draw, check, store.

The order matters: everything that can fail cheaply (the request, signing the
link) or expensively (the model) happens before the single create-only upload,
so a failed generation writes no blob.

The whole request keeps one deadline, under the 230 s after which Azure's front end
drops it: the model gets the time the storage steps before it left, less a storage
timeout for each step that may follow it.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import nullcontext
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from azure.core.exceptions import AzureError

from visionary.endpoints import note
from visionary.errors import ApiError
from visionary.guards import Guards, fingerprint
from visionary.sas import ReadSas
from visionary.settings import ModelSettings
from visionary.storage import Gallery, StoredImage
from visionary.text import forbidden, visible

if TYPE_CHECKING:  # the providers pull in openai and httpx: loaded on first use, not at start-up
    from visionary.images import GeneratedImage, ImageProvider


@dataclass(frozen=True)
class Deadline:
    """When a request must have been answered, on the monotonic clock (or one a test holds still)."""

    at: float
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def left(self) -> float:
        return self.at - self.clock()


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    size: str

    @classmethod
    def from_body(cls, body: object, max_prompt_chars: int, models: ModelSettings) -> ImageRequest:
        if not isinstance(body, dict):
            raise ApiError.invalid_json('The request body must be a JSON object like {"prompt": "..."}.')
        return cls(_prompt(body.get("prompt"), max_prompt_chars), _size(body.get("size"), models))


def _prompt(value: object, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ApiError.invalid_prompt('"prompt" must be a string describing the picture.')
    prompt = value.strip()
    if not visible(prompt):
        raise ApiError.invalid_prompt('"prompt" is empty; describe the picture to draw.')
    if len(prompt) > max_chars:
        raise ApiError.prompt_too_long(max_chars)
    if any(forbidden(ch) for ch in prompt):
        raise ApiError.invalid_prompt('"prompt" contains control characters or invalid Unicode.')
    return prompt


def _size(value: object, models: ModelSettings) -> str:
    if value is None:
        return models.default_size
    if not isinstance(value, str) or value not in models.image_sizes:
        raise ApiError.invalid_parameter('"size" must be one of ' + ", ".join(models.image_sizes) + ".")
    return value


@dataclass(frozen=True)
class CreatedImage:
    stored: StoredImage
    sas: ReadSas

    def to_json(self) -> dict[str, object]:
        return {
            "message": "Image uploaded successfully",
            **self.stored.to_json(self.sas),
            "revisedPrompt": self.stored.revised_prompt,
            "model": self.stored.model,
        }


async def generate_image(
    request: ImageRequest,
    images: ImageProvider,
    gallery: Gallery,
    guards: Guards,
    idempotency_key: str | None = None,
    deadline: Deadline | None = None,
) -> CreatedImage:
    """Draw and store one picture; with a key, at most once per key (a repeat gets the first answer).

    With a deadline, the answer comes before it, whatever the model and storage do.
    """
    note(prompt=request.prompt)
    # Of the storage steps that may follow the model (settings.MAX_STORAGE_STEPS_AFTER_MODEL),
    # the ones this request takes: the upload, and one for each guard it meets.
    steps_after = 1 + (idempotency_key is not None) + (guards.cap is not None)
    reserve = gallery.timeout * steps_after
    # The link is signed first: a delegation key storage refuses must fail the request before
    # the model is paid and anything is stored. It is signed again for the answer.
    sas = await gallery.sign()
    await gallery.check_after_failure()  # and storage, after a failed upload, must answer first

    async def draw_and_store() -> dict:
        async with guards.cap.slot() if guards.cap else nullcontext():
            image = await _draw(images, request, _time_for_model(deadline, reserve))
            note(model=image.model)
            stored = await gallery.upload(
                image.data, image.content_type, request.prompt, image.revised_prompt, image.model
            )
        return stored.to_record()

    if idempotency_key is None:
        record = await draw_and_store()
    else:
        # A repeat waiting on a running first request stops in time for its last look at the marker.
        max_wait = deadline.left() - reserve if deadline else None
        record = await guards.ledger.once(
            idempotency_key, fingerprint(request.prompt, request.size), draw_and_store, max_wait
        )
    stored = StoredImage.from_record(record)
    note(model=stored.model, blob=stored.name.blob)  # a repeat's line too, though it drew nothing
    return CreatedImage(stored, await _signed_again(gallery, sas, deadline))


async def _signed_again(gallery: Gallery, early: ReadSas, deadline: Deadline | None) -> ReadSas:
    """A link whose lifetime counts from the answer, not from before a model that may have
    taken minutes of it; the early link if storage (a delegation key's) cannot sign it in time."""
    try:
        async with asyncio.timeout(deadline.left() if deadline else None):
            return await gallery.sign()
    except (TimeoutError, AzureError):
        return early


def _time_for_model(deadline: Deadline | None, reserve: float) -> float | None:
    if deadline is None:
        return None
    seconds = deadline.left() - reserve
    if seconds <= 0:  # slow storage before the model spent its time: not worth paying for
        raise ApiError.storage_unavailable()
    return seconds


async def _draw(images: ImageProvider, request: ImageRequest, seconds: float | None) -> GeneratedImage:
    """The provider's picture within `seconds` (its own deadline applies as well)."""
    try:
        async with asyncio.timeout(seconds):
            return await images.generate(request.prompt, request.size)
    except TimeoutError:
        raise ApiError.upstream_timeout() from None
