"""Image providers: one small interface, two implementations.

`ModelImages` asks an OpenAI-protocol image model (OpenAI, Azure OpenAI or a
compatible server) and accepts both answer shapes, base64 (`b64_json`, what
gpt-image models return) and a URL (older or compatible servers), which it
downloads with a timeout and a size cap. `visionary.offline.OfflineImages`
draws without any network. Whatever a model sends, its bytes must really be an
image of a type we store before anyone stores them.
"""

from __future__ import annotations

import asyncio
import binascii
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import pybase64

from visionary.errors import ApiError
from visionary.models import MALFORMED_ANSWER, call_model, capped_body, credentials_hint, is_refusal, json_answer
from visionary.text import without_forbidden

if TYPE_CHECKING:
    from openai import AsyncOpenAI

MAX_IMAGE_BYTES = 20 * 1024 * 1024
# A b64_json answer: the picture's base64 (4 bytes for 3), and room for a revised prompt and usage.
MAX_ANSWER_BYTES = MAX_IMAGE_BYTES * 4 // 3 + 1024 * 1024
DOWNLOAD_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# A picture inline as a data: URL: OpenedAI Images (Stable Diffusion, FLUX) answers `url` with one
# when no response_format is asked for, and gateways put one in `b64_json`.
_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    content_type: str
    model: str
    revised_prompt: str | None = None


class ImageProvider(Protocol):
    async def generate(self, prompt: str, size: str) -> GeneratedImage: ...


def image_type(data: bytes) -> str | None:
    """The stored content type these bytes really are: by their signature, first chunk and whole ending."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff") and data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and data[12:16] in (b"VP8 ", b"VP8L", b"VP8X"):
        if int.from_bytes(data[4:8], "little") + 8 <= len(data):
            return "image/webp"
    return None


def checked(data: bytes, model: str, revised_prompt: str | None) -> GeneratedImage:
    if len(data) > MAX_IMAGE_BYTES:  # a download stops at the cap; base64 arrives whole
        raise _too_large()
    content_type = image_type(data)
    if content_type is None:
        raise ApiError.upstream_error("The model service answered with something that is not a whole image.")
    return GeneratedImage(data, content_type, model, revised_prompt)


class ModelImages:
    """Images from an OpenAI-protocol model. `model` is a model name, or on Azure a deployment."""

    def __init__(
        self,
        client: AsyncOpenAI,
        model: str,
        downloads: httpx.AsyncClient,
        deadline: float,
        download_timeout: float,
    ) -> None:
        self._client = client
        self._model = model
        self._downloads = downloads
        self._deadline = deadline  # for the model call with all its retries, and a download
        self._download_timeout = download_timeout  # a whole download, as one model attempt has

    async def generate(self, prompt: str, size: str) -> GeneratedImage:
        # One deadline, one error mapping: the model call, its retries and a download together.
        return await call_model(
            lambda: self._draw(prompt, size), self._deadline, "image model and size", credentials_hint(self._client)
        )

    async def _draw(self, prompt: str, size: str) -> GeneratedImage:
        # The SDK asks (its retries, sign-in and errors); the answer is read, capped, and parsed here.
        answer = await json_answer(
            self._client.images.with_streaming_response.generate(model=self._model, prompt=prompt, size=size, n=1),
            MAX_ANSWER_BYTES,
            _too_large,
        )
        picture = _first_item(answer)
        if _filtered(picture) or (isinstance(answer, dict) and _filtered(answer)):
            raise ApiError.content_policy_violation()
        b64_json, url, revised_prompt = _fields(picture)
        if inline := b64_json or (url if url and _DATA_URL.match(url) else None):
            data = decode_base64(_without_data_url_head(inline))
        elif url:
            async with asyncio.timeout(self._download_timeout):  # httpx bounds each read, not the whole
                data = await download(self._downloads, url)
        else:
            raise ApiError.upstream_error("The model service answered with no image.")
        return checked(data, self._model, revised_prompt)


def _first_item(answer: Any) -> dict:
    """The answer's first picture item; empty if it has none (the answer may be any JSON at all)."""
    try:
        item = (answer["data"] or [])[0]  # null: no pictures, as an empty list
    except MALFORMED_ANSWER:
        return {}
    return item if isinstance(item, dict) else {}


def _filtered(item: dict) -> bool:
    """Whether Azure's output filter took the picture out: an error of code contentFilter in
    place of the image (of an item, or of the whole answer's data), as Microsoft documents it."""
    error = item.get("error")
    return isinstance(error, dict) and is_refusal(error.get("code"))


def _fields(item: dict) -> tuple[str | None, str | None, str | None]:
    """The picture's base64, link and revised prompt, each None unless it is text."""
    fields = (item.get("b64_json"), item.get("url"), item.get("revised_prompt"))
    b64_json, url, revised_prompt = (value if isinstance(value, str) and value else None for value in fields)
    return b64_json, url, without_forbidden(revised_prompt) if revised_prompt else None


def _without_data_url_head(text: str) -> str:
    """The base64 of a picture sent as a data: URL; any other text as it is."""
    head = _DATA_URL.match(text)
    return text[head.end():] if head else text


def decode_base64(text: str) -> bytes:
    """The bytes of a model's `b64_json`; anything but strict standard base64 is the model's error.

    pybase64 decodes with SIMD: a 1.5 MB picture takes 0.1 ms where binascii takes 4 ms,
    time the event loop could not serve any other request (see README, Performance).
    """
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError.upstream_error("The model service sent an image that is not valid base64.") from None


async def download(client: httpx.AsyncClient, url: str) -> bytes:
    """Fetch an image the model links to: bounded in time and size."""
    try:
        async with client.stream("GET", _link(url)) as response:
            if response.status_code != 200:
                raise _broken_link()
            declared = response.headers.get("content-length")
            return await capped_body(response.aiter_bytes(), declared, MAX_IMAGE_BYTES, _too_large)
    except httpx.TimeoutException:
        raise ApiError.upstream_timeout() from None
    except (httpx.HTTPError, ValueError):  # ValueError: a host IDNA cannot decode, here or redirected to
        raise _broken_link() from None


def _link(url: str) -> httpx.URL:
    """The model's link, if it is one to fetch: httpx fails on the others with errors of every kind."""
    try:
        link = httpx.URL(url)
    except httpx.InvalidURL:
        raise _broken_link() from None
    if link.scheme not in ("http", "https") or not link.raw_host or not 0 < (link.port or 80) < 65536:
        raise _broken_link()
    return link


def _broken_link() -> ApiError:
    return ApiError.upstream_error("The image link from the model service did not work.")


def _too_large() -> ApiError:
    return ApiError.upstream_error(f"The model's image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB.")
