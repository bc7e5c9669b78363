"""generateImage: validate the request, draw, check, store.

The order matters: everything that can fail cheaply (the request, signing the
link) or expensively (the model) happens before the single create-only upload,
so a failed generation writes no blob.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from visionary.endpoints import note
from visionary.errors import ApiError
from visionary.guards import Guards, fingerprint
from visionary.sas import ReadSas
from visionary.settings import ModelSettings
from visionary.storage import Gallery, StoredImage
from visionary.text import forbidden

if TYPE_CHECKING:  # the providers pull in openai and httpx: loaded on first use, not at start-up
    from visionary.images import ImageProvider


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
    if not prompt:
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
) -> CreatedImage:
    """Draw and store one picture; with a key, at most once per key (a repeat gets the first answer)."""
    note(prompt=request.prompt)
    # The link is signed first: a delegation key storage refuses must fail the request before
    # the model is paid and anything is stored. Its lifetime counts from here.
    sas = await gallery.sign()

    async def draw_and_store() -> dict:
        async with guards.cap.slot() if guards.cap else nullcontext():
            image = await images.generate(request.prompt, request.size)
            note(model=image.model)
            stored = await gallery.upload(
                image.data, image.content_type, request.prompt, image.revised_prompt, image.model
            )
        return stored.to_record()

    if idempotency_key is None:
        record = await draw_and_store()
    else:
        record = await guards.ledger.once(idempotency_key, fingerprint(request.prompt, request.size), draw_and_store)
    stored = StoredImage.from_record(record)
    note(blob=stored.name.blob)
    return CreatedImage(stored, sas)
