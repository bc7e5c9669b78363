"""The gallery in Blob Storage: create-only uploads and newest-first pages.

One private container holds every picture under `gallery/` (see `naming`). A page
is one `List Blobs` call, and its cursor wraps Azure's continuation token (see `cursors`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TypedDict
from urllib.parse import quote, unquote, urlsplit

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobProperties, ContentSettings
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient, LinearRetry

from visionary import naming
from visionary.cursors import decode_cursor, encode_cursor, invalid_cursor
from visionary.errors import ApiError
from visionary.identity import azure_credential
from visionary.sas import AccountKeySigner, ReadSas, ReadSigner, SasPolicy, UserDelegationSigner
from visionary.settings import ACCOUNT_NAME, StorageSettings
from visionary.shared_reads import SharedReads

CACHE_CONTROL = "public, max-age=31536000, immutable"
# When to look for the blob of an upload that failed on a timeout (seconds between looks).
CLEANUP_PAUSES = (1, 2, 4, 8, 15, 30, 60, 120)
MAX_CLASH_RETRIES = 50
# Azure caps all metadata of a blob (names and values) at 8 KiB. The 192 left over hold what
# is added outside the budget: `upload_id` (41 characters) and `prompt_truncated` (20).
METADATA_BUDGET = 8000
MAX_MODEL_METADATA = 256
TRUNCATED = "\u2026"  # "…", what ends a listed prompt that was stored cut

log = logging.getLogger("visionary")


@dataclass(frozen=True)
class StoredImage:
    name: naming.BlobName  # when it was made, too: the name's timestamp
    prompt: str
    revised_prompt: str | None = None
    model: str | None = None

    def to_json(self, sas: ReadSas) -> dict[str, str | None]:
        return {
            "name": self.name.display_name,
            "blob": self.name.blob,
            "url": sas.url_for(self.name.blob),
            "prompt": self.prompt,
            "createdAt": _iso(self.name.created_at),
        }

    def to_record(self) -> dict[str, str | None]:
        """What to keep of it (no link: links are signed afresh when shown)."""
        return {"blob": self.name.blob, "prompt": self.prompt, "revisedPrompt": self.revised_prompt, "model": self.model}

    @classmethod
    def is_record(cls, record: dict) -> bool:
        """Whether `record` reads as one `to_record` wrote (a ledger's may have been edited by hand)."""
        try:
            cls.from_record(record)
        except (KeyError, TypeError, ValueError):
            return False
        return True

    @classmethod
    def from_record(cls, record: dict) -> StoredImage:
        """What `to_record` kept; a record edited by hand raises KeyError, TypeError or ValueError."""
        blob, prompt, revised_prompt, model = (record[key] for key in ("blob", "prompt", "revisedPrompt", "model"))
        if not (isinstance(blob, str) and isinstance(prompt, str)):
            raise TypeError("a stored record's blob and prompt are text")
        if not all(value is None or isinstance(value, str) for value in (revised_prompt, model)):
            raise TypeError("a stored record's revised prompt and model are text or null")
        name = naming.parse_gallery_name(blob)
        if name is None:
            raise ValueError(f"a stored record names no gallery blob: {blob!r}")
        return cls(name, prompt, revised_prompt, model)


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


class LateWrites:
    """Writes we gave up on (a timeout, storage away) that storage may still make.

    Each is looked for over the next minutes and deleted once it appears, if it is still
    the one we sent (its metadata names our write): a request that answered an error
    must leave nothing behind.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def remove(self, blob: BlobClient, key: str, write: str, label: str) -> None:
        """Delete `blob` when it appears with metadata `key` == `write`; `label` names it in the log."""
        self._start(_remove_if_made_by(blob, key, write, label))

    def retry(self, change: Callable[[], Awaitable[object]], label: str) -> None:
        """Make `change` once storage answers again: tried after each of CLEANUP_PAUSES until
        storage takes it (`change` itself must be one that is safe to make late, ETag-conditional)."""
        self._start(_retry_until_made(change, label))

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _start(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _retry_until_made(change: Callable[[], Awaitable[object]], label: str) -> None:
    for pause in CLEANUP_PAUSES:
        await asyncio.sleep(pause)
        try:
            await change()
        except (TimeoutError, AzureError):
            continue  # storage still away
        log.warning("made %s once storage answered again", label)
        return


async def _remove_if_made_by(blob: BlobClient, key: str, write: str, label: str) -> None:
    for pause in CLEANUP_PAUSES:
        await asyncio.sleep(pause)
        try:
            properties = await blob.get_blob_properties()
            if properties.metadata.get(key) == write:
                await blob.delete_blob(etag=properties.etag, match_condition=MatchConditions.IfNotModified)
                log.warning("removed %s: it was stored after its request had failed", label)
            return
        except ResourceNotFoundError:
            continue  # not (yet) there: the request may still be on its way
        except AzureError:
            continue  # storage still away


class Gallery:
    """The gallery container, with the signer that makes its read links."""

    def __init__(
        self,
        container: ContainerClient,
        signer: ReadSigner,
        service: BlobServiceClient,
        timeout: float,
        clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        credential: AsyncTokenCredential | None = None,
    ) -> None:
        self.container = container
        self.signer = signer
        self.clock = clock
        self.service = service  # owns the connection pool the container client borrows
        self.timeout = timeout  # a deadline for each storage operation, retries included
        self._credential = credential
        self.late_writes = LateWrites()  # failed uploads, and idempotency claims sent without an answer
        # Simultaneous requests for the same page (a burst of visitors) share one List Blobs call.
        self._pages: SharedReads[tuple[int, str | None], tuple[list[StoredImage], str | None]] = SharedReads(
            self._list_page, cancelled=ApiError.storage_unavailable
        )
        self._upload_failed = False  # the last upload failed: storage may be away, or refuse us

    @classmethod
    def from_settings(cls, settings: StorageSettings) -> Gallery:
        credential = azure_credential(settings.identity) if settings.account_url else None
        service = open_service_client(settings, credential)
        container = service.get_container_client(settings.container)
        key = getattr(service.credential, "account_key", None)
        if key is None and credential is None:
            raise ApiError.not_configured(
                "The storage connection string has no account key to sign read links with: use one with "
                "AccountKey, or VISIONARY_STORAGE_ACCOUNT_URL with a managed identity."
            )
        account_name = service.account_name
        if account_name is None or (key is None and not ACCOUNT_NAME.fullmatch(account_name)):
            # A key comes with its account's name. An account URL names it only as the account's
            # own endpoint: a custom domain names none, and a private-link host a wrong one.
            raise ApiError.not_configured(
                "The storage account URL (VISIONARY_STORAGE_ACCOUNT_URL or AzureWebJobsStorage__blobServiceUri) "
                "must be the account's own, https://{account}.blob.core.windows.net, as read links are signed "
                "with its name; behind a private endpoint, private DNS resolves that name to it."
            )
        policy = SasPolicy(
            account_name=account_name,
            container=settings.container,
            container_url=_bare_url(container.url),
            ttl=timedelta(minutes=settings.sas_ttl_minutes),
            public_base_url=settings.public_base_url,
        )
        if key is not None:
            signer: ReadSigner = AccountKeySigner(policy, key)
        else:
            signer = UserDelegationSigner(policy, service)
        return cls(container, signer, service, settings.timeout_seconds, credential=credential)

    def system_container(self, name: str) -> ContainerClient:
        """A private container beside the gallery, for the app's own bookkeeping."""
        return self.service.get_container_client(name)

    async def close(self) -> None:
        self.late_writes.cancel()
        await self.service.close()
        if self._credential is not None:
            await self._credential.close()

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
        upload_id = uuid.uuid4().hex
        attempts: list[naming.BlobName] = []
        try:
            async with asyncio.timeout(self.timeout):
                stored = await self._upload_unique(name, data, prompt, revised_prompt, model, upload_id, attempts)
        except (TimeoutError, AzureError):
            self._upload_failed = True
            # Storage may still apply a request we gave up on: a picture would then
            # appear although its request failed. Remove it once storage answers again.
            if attempts:
                blob = attempts[-1].blob
                self.late_writes.remove(self.container.get_blob_client(blob), "upload_id", upload_id, blob[:40])
            raise
        self._upload_failed = False
        return stored

    async def check_after_failure(self) -> None:
        """Before a model is paid for a picture: after a failed upload, storage must answer first.

        So an outage, or a key that storage no longer takes, costs one lost picture rather than
        one a request; while uploads succeed, this asks storage nothing.
        """
        if not self._upload_failed:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self.container.get_container_properties()
        except ResourceNotFoundError:
            pass  # no container yet: storage answers, and the upload creates it
        self._upload_failed = False

    async def _upload_unique(
        self,
        name: naming.BlobName,
        data: bytes,
        prompt: str,
        revised_prompt: str | None,
        model: str | None,
        upload_id: str,
        attempts: list[naming.BlobName],
    ) -> StoredImage:
        for candidate in names_from(name):
            metadata = encode_metadata(prompt, revised_prompt, model, candidate.created_at) | {"upload_id": upload_id}
            attempts.append(candidate)
            try:
                await self._put(candidate, data, metadata)
            except ResourceExistsError:
                # Another picture of the same millisecond; or ours, stored by an attempt whose
                # answer was lost, which the SDK's retry then met.
                if await made_by(self.container.get_blob_client(candidate.blob), "upload_id", upload_id) is None:
                    continue
            return StoredImage(candidate, prompt, revised_prompt, model)
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
        await ensure_container(self.container)

    async def sign(self) -> ReadSas:
        """A read link for the gallery, within the storage deadline (fetching a delegation key is a storage call)."""
        async with asyncio.timeout(self.timeout):
            return await self.signer.sign()

    async def page(self, limit: int, cursor: str | None) -> Page:
        """One page of the gallery, newest first, in a single List Blobs call."""
        token = decode_cursor(cursor) if cursor else None
        async with asyncio.timeout(self.timeout):
            images, next_token = await self._pages.get((limit, token))
            sas = await self.signer.sign()  # may fetch a delegation key: a storage call too
        return Page(images, encode_cursor(next_token) if next_token else None, sas)

    async def _list_page(self, page: tuple[int, str | None]) -> tuple[list[StoredImage], str | None]:
        # No deadline of its own: once every request waiting for it has given up, it is cancelled.
        limit, token = page
        pages = self.container.list_blobs(
            name_starts_with=naming.PREFIX, include=["metadata"], results_per_page=limit
        ).by_page(continuation_token=token)
        images: list[StoredImage] = []
        try:
            async for blob_page in pages:
                images = [image async for blob in blob_page if (image := _stored_image(blob))]
                break
        except ResourceNotFoundError:  # no container yet: an empty gallery
            return [], None
        except HttpResponseError as error:
            if token and error.status_code == 400:  # a forged cursor carried a token Azure rejects
                raise invalid_cursor() from None
            raise
        # by_page() returns an AsyncPageIterator, which has the token; azure-core annotates an AsyncIterator.
        return images, pages.continuation_token  # type: ignore[attr-defined]


async def made_by(blob: BlobClient, key: str, write: str) -> BlobProperties | None:
    """The blob's properties if the write named `write` made it (its metadata `key` says so);
    None if it is gone or another writer's.

    How a write whose answer was lost, which the SDK's retry then met as a conflict, is told
    from another writer's.
    """
    try:
        properties = await blob.get_blob_properties()
    except ResourceNotFoundError:
        return None
    return properties if properties.metadata.get(key) == write else None


def names_from(first: naming.BlobName) -> Iterator[naming.BlobName]:
    """The names a picture may take on a clash: `first`, then 1 ms later each time."""
    # None past the last millisecond the scheme can name (its inverted timestamp has 13 digits).
    return (first.later(ms) for ms in range(MAX_CLASH_RETRIES) if first.ts + ms <= naming.MAX_TS)


async def ensure_container(container: ContainerClient) -> None:
    """Create the container, private (no public access), if it is not there yet."""
    try:
        await container.create_container()
    except ResourceExistsError:
        pass


def _bare_url(url: str) -> str:
    """The URL without its query: a client built on a SAS carries it there, and links must not."""
    return urlsplit(url)._replace(query="", fragment="").geturl().rstrip("/")


class _ClientOptions(TypedDict):
    """What every storage client is made with, however it signs in."""

    connection_timeout: float
    read_timeout: float
    retry_policy: LinearRetry
    use_env_settings: bool


def open_service_client(
    settings: StorageSettings, credential: AsyncTokenCredential | None = None
) -> BlobServiceClient:
    # The storage SDK's default retries back off 15 s and more: an outage would hold
    # requests for minutes. Two quick retries, then the caller's deadline decides.
    # use_env_settings=False: aiohttp's trust_env would look for a .netrc file in a worker
    # thread on every request (6% of a busy process in the profile); proxies from
    # HTTP(S)_PROXY are not used for storage.
    options = _ClientOptions(
        connection_timeout=settings.timeout_seconds,
        read_timeout=settings.timeout_seconds,
        # The SDK annotates these seconds as int, but computes with floats (random.uniform).
        retry_policy=LinearRetry(backoff=0.3, random_jitter_range=0.2, retry_total=2),  # type: ignore[arg-type]
        use_env_settings=False,
    )
    if settings.connection_string:
        try:
            return BlobServiceClient.from_connection_string(settings.connection_string, **options)
        except ValueError:
            raise ApiError.not_configured(
                "The storage connection string (VISIONARY_STORAGE_CONNECTION_STRING or AzureWebJobsStorage) "
                "is malformed."
            ) from None
    if settings.account_name and settings.account_key:
        url = f"https://{settings.account_name}.blob.core.windows.net"
        key = {"account_name": settings.account_name, "account_key": settings.account_key}
        return BlobServiceClient(url, credential=key, **options)
    if settings.account_url is None:
        raise ValueError("StorageSettings name no way to reach the account")
    return BlobServiceClient(settings.account_url, credential=credential, **options)


def encode_metadata(
    prompt: str, revised_prompt: str | None, model: str | None, created_at: datetime
) -> dict[str, str]:
    """Blob metadata must be ASCII: prompts and the model's name are stored percent-encoded UTF-8.

    Azure limits a blob's metadata to 8 KiB. The rare prompt that does not fit
    whole is cut at a character boundary and flagged `prompt_truncated`; the
    revised prompt gives way first. A model's name is a setting, so any text at
    all (a compatible server's model may be `modèle-1`): kept to its first 256
    characters encoded, it never fails an upload the model has been paid for.
    """
    metadata = {"created": _iso(created_at)}
    if model:
        metadata["model"] = _quote_within(model, MAX_MODEL_METADATA)
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
    prompt = unquote(metadata["prompt"]) if "prompt" in metadata else name.title
    if metadata.get("prompt_truncated") == "true":
        prompt += TRUNCATED  # the rest did not fit in Azure's 8 KiB: say so, not pass a part off as whole
    return StoredImage(
        name=name,
        prompt=prompt,
        revised_prompt=unquote(metadata["revised_prompt"]) if "revised_prompt" in metadata else None,
        model=unquote(metadata["model"]) if "model" in metadata else None,
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_code(error: HttpResponseError) -> str | None:
    """The code storage answered with (ContainerNotFound, AuthorizationPermissionMismatch...), if any.

    The storage SDK sets `error_code` (a StorageErrorCode, or a str it does not know) on the
    azure-core errors it raises; azure-core's own classes do not declare it.
    """
    code = getattr(error, "error_code", None)
    return getattr(code, "value", code)


def failed_sign_in(error: BaseException) -> bool:
    """The credential failed, and storage was never asked: no answer at all, or an identity
    endpoint's 401 or 403 (IMDS's, App Service's), which carries none of the error codes
    storage answers with."""
    return isinstance(error, ClientAuthenticationError) and (error.response is None or error_code(error) is None)


def describe_failure(error: BaseException) -> str:
    """A storage failure in a few words for a log line: status and code, never a URL, key or body.

    On Azure the common keyless mistakes (a missing role: 403 AuthorizationPermissionMismatch;
    shared keys turned off: 403 KeyBasedAuthenticationNotPermitted) differ only by code.
    """
    if failed_sign_in(error):
        return "the sign-in to storage failed: check the Function App's managed identity"
    if isinstance(error, HttpResponseError) and error.status_code:
        code = error_code(error) or ""
        return f"storage answered {error.status_code} {code}".rstrip()
    if isinstance(error, TimeoutError):
        return "storage did not answer within the deadline"
    return f"storage could not be reached ({type(error).__name__})"
