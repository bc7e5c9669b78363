"""The gallery in Blob Storage: create-only uploads and newest-first pages.

One private container holds every picture under `gallery/` (see `naming`). A page
is one `List Blobs` call; the cursor handed to clients wraps Azure's
continuation token in an encoding of our own, so a cursor that is not ours is
rejected instead of silently restarting the listing.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, unquote

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobServiceClient, ContainerClient, LinearRetry

from visionary import naming
from visionary.errors import ApiError
from visionary.sas import AccountKeySigner, ReadSas, ReadSigner, SasPolicy
from visionary.settings import StorageSettings

CACHE_CONTROL = "public, max-age=31536000, immutable"
MAX_CLASH_RETRIES = 50
# Azure caps all metadata of a blob at 8 KiB; keep a margin for names and framing.
METADATA_BUDGET = 8000


@dataclass(frozen=True)
class StoredImage:
    name: naming.BlobName
    prompt: str
    created_at: datetime
    revised_prompt: str | None = None
    model: str | None = None

    def to_json(self, sas: ReadSas) -> dict[str, str | None]:
        return {
            "name": self.name.display_name,
            "blob": self.name.blob,
            "url": sas.url_for(self.name.blob),
            "prompt": self.prompt,
            "createdAt": _iso(self.created_at),
        }


@dataclass(frozen=True)
class Page:
    images: list[StoredImage]
    next_cursor: str | None
    sas: ReadSas

    def to_json(self) -> dict[str, object]:
        return {
            "imageUrls": [image.to_json(self.sas) for image in self.images],
            "nextCursor": self.next_cursor,
        }


class Gallery:
    """The gallery container, with the signer that makes its read links."""

    def __init__(
        self,
        container: ContainerClient,
        signer: ReadSigner,
        clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        service: BlobServiceClient | None = None,
    ) -> None:
        self.container = container
        self.signer = signer
        self.clock = clock
        self._service = service  # owns the connection pool the container client borrows

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> Gallery:
        service = open_service_client(settings)
        container = service.get_container_client(settings.container)
        policy = SasPolicy(
            account_name=service.account_name,
            container=settings.container,
            container_url=container.url.rstrip("/"),
            ttl=timedelta(minutes=settings.sas_ttl_minutes),
            public_base_url=settings.public_base_url,
        )
        key = getattr(service.credential, "account_key", None)
        if key is None:
            raise ApiError.not_configured("Signing read links without an account key arrives with keyless storage.")
        return cls(container, AccountKeySigner(policy, key), service=service)

    async def close(self) -> None:
        await (self._service or self.container).close()

    async def upload(
        self,
        data: bytes,
        content_type: str,
        prompt: str,
        revised_prompt: str | None = None,
        model: str | None = None,
        ts: int | None = None,
    ) -> StoredImage:
        """Store the bytes under a new name; never overwrites (If-None-Match: *).

        `ts` is the picture's time in epoch milliseconds, now by default. On a
        clash (another upload in the same millisecond) the timestamp moves on by
        1 ms and it tries again. The container is created on first use.
        """
        name = naming.name_for(prompt, self.clock() if ts is None else ts, content_type)
        for _ in range(MAX_CLASH_RETRIES):
            created_at = name.created_at
            metadata = encode_metadata(prompt, revised_prompt, model, created_at)
            try:
                await self._put(name, data, metadata)
            except ResourceExistsError:
                name = name.later()
                continue
            return StoredImage(name, prompt, created_at, revised_prompt, model)
        raise ApiError.storage_unavailable()

    async def _put(self, name: naming.BlobName, data: bytes, metadata: dict[str, str]) -> None:
        blob = self.container.get_blob_client(name.blob)
        settings = ContentSettings(content_type=name.content_type, cache_control=CACHE_CONTROL)
        try:
            await blob.upload_blob(data, overwrite=False, content_settings=settings, metadata=metadata)
        except ResourceNotFoundError:
            await self.ensure_container()
            await blob.upload_blob(data, overwrite=False, content_settings=settings, metadata=metadata)

    async def ensure_container(self) -> None:
        """Create the container, private (no public access), if it is not there yet."""
        try:
            await self.container.create_container()
        except ResourceExistsError:
            pass

    async def page(self, limit: int, cursor: str | None) -> Page:
        """One page of the gallery, newest first, in a single List Blobs call."""
        token = decode_cursor(cursor) if cursor else None
        pages = self.container.list_blobs(
            name_starts_with=naming.PREFIX, include=["metadata"], results_per_page=limit
        ).by_page(continuation_token=token)
        images: list[StoredImage] = []
        try:
            async for blob_page in pages:
                images = [image async for blob in blob_page if (image := _stored_image(blob))]
                break
        except ResourceNotFoundError:  # no container yet: an empty gallery
            return Page([], None, await self.signer.sign())
        except HttpResponseError as error:
            if token and error.status_code == 400:  # a forged cursor carried a token Azure rejects
                raise _invalid_cursor() from None
            raise
        next_token = pages.continuation_token
        return Page(images, encode_cursor(next_token) if next_token else None, await self.signer.sign())


def open_service_client(settings: StorageSettings) -> BlobServiceClient:
    # The storage SDK's default retries back off 15 s and more: an outage would hold
    # requests for minutes. Two quick retries, then the caller's deadline decides.
    # use_env_settings=False: aiohttp's trust_env would look for a .netrc file in a worker
    # thread on every request (6% of a busy process in the profile); proxies from
    # HTTP(S)_PROXY are not used for storage.
    options = dict(
        connection_timeout=settings.timeout_seconds,
        read_timeout=settings.timeout_seconds,
        retry_policy=LinearRetry(backoff=0.3, random_jitter_range=0.2, retry_total=2),
        use_env_settings=False,
    )
    if settings.connection_string:
        return BlobServiceClient.from_connection_string(settings.connection_string, **options)
    if settings.account_key:
        url = f"https://{settings.account_name}.blob.core.windows.net"
        credential = {"account_name": settings.account_name, "account_key": settings.account_key}
        return BlobServiceClient(url, credential=credential, **options)
    raise ApiError.not_configured("Keyless storage (VISIONARY_STORAGE_ACCOUNT_URL) is not supported yet.")


def encode_metadata(
    prompt: str, revised_prompt: str | None, model: str | None, created_at: datetime
) -> dict[str, str]:
    """Blob metadata must be ASCII: prompts are stored percent-encoded UTF-8.

    Azure limits a blob's metadata to 8 KiB. The rare prompt that does not fit
    whole is cut at a character boundary and flagged `prompt_truncated`; the
    revised prompt gives way first.
    """
    metadata = {"created": _iso(created_at)}
    if model:
        metadata["model"] = model
    budget = METADATA_BUDGET - sum(len(k) + len(v) for k, v in metadata.items())
    encoded_prompt = _quote_within(prompt, budget)
    metadata["prompt"] = encoded_prompt
    budget -= len("prompt") + len(encoded_prompt)
    if len(encoded_prompt) < len(quote(prompt, safe="")):
        metadata["prompt_truncated"] = "true"
    elif revised_prompt:
        encoded_revised = _quote_within(revised_prompt, budget - len("revised_prompt"))
        if encoded_revised:
            metadata["revised_prompt"] = encoded_revised
    return metadata


def _quote_within(text: str, budget: int) -> str:
    budget = max(budget, 0)
    while len(encoded := quote(text, safe="")) > budget:
        # A character is at most 12 ASCII characters encoded (4 bytes x %XX).
        text = text[: -max(1, (len(encoded) - budget) // 12)]
    return encoded


def _stored_image(blob) -> StoredImage | None:
    name = naming.parse_gallery_name(blob.name)
    if name is None:
        return None
    metadata = blob.metadata or {}
    return StoredImage(
        name=name,
        prompt=unquote(metadata["prompt"]) if "prompt" in metadata else name.title,
        created_at=name.created_at,
        revised_prompt=unquote(metadata["revised_prompt"]) if "revised_prompt" in metadata else None,
        model=metadata.get("model"),
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- cursors ---------------------------------------------------------------

_CURSOR_VERSION = 1
MAX_CURSOR_CHARS = 4096


def encode_cursor(continuation_token: str) -> str:
    payload = json.dumps({"v": _CURSOR_VERSION, "token": continuation_token}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """Azure's continuation token from one of our cursors; anything else is a 400."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.b64decode(padded, altchars=b"-_", validate=True))
        if payload["v"] != _CURSOR_VERSION or not isinstance(payload["token"], str) or not payload["token"]:
            raise ValueError("not ours")
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise _invalid_cursor() from None
    return payload["token"]


def _invalid_cursor() -> ApiError:
    return ApiError.invalid_parameter(
        "cursor is not one this API issued; pass the nextCursor of the previous page, or omit it."
    )
