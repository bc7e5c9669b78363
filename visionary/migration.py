"""Moving the Node version's blobs into the naming scheme (`python -m visionary migrate`).

The Node version stored each picture as `{prompt}_{ts}.png` with the raw prompt, so a
prompt with a "/" put its picture in a folder (`cats/dogs_{ts}.png`). Each one is
copied to its scheme name `gallery/{inv}_{title}_{ts}.{ext}` with the Node timestamp
(so the gallery keeps the order the pictures were drawn in), the copy is checked to
hold the same bytes and prompt, and only then is the source deleted.

Two Node names can make one scheme name (a title drops control characters and folds
whitespace), so a target name holding other bytes, or the same bytes under another
prompt, is another picture: the copy moves on by 1 ms, as a new upload does on a clash,
and both pictures stay. Only when every name tried holds another picture is it a
conflict, and the source stays.

Any step may be interrupted. The copy is create-only, and the names are tried in order,
so a later run meets an earlier run's copy (the same bytes and prompt) before any free
name: it deletes the source (resumed) instead of copying it again. A dry run writes
nothing, so it remembers where it would have copied what, and a later source of the same
run meets that copy as it would in a real run: the plan is what a run does.

Blobs under `gallery/` are neither listed nor moved (the scheme's own; a Node prompt that
began with "gallery/" left its picture there too, and it stays: see the README), and
nothing that is not a Node name holding a whole image is moved.

The functions here print nothing: `migrate` hands each blob's `Outcome` to its `progress`
callback as it happens and returns a `Report`; the command prints each outcome's `line()`
as it comes, then the report's `summary()`.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeGuard

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.storage.blob import BlobProperties, ContentSettings
from azure.storage.blob.aio import ContainerClient

from visionary import naming
from visionary.identity import ManagedIdentity, how_it_signs_in
from visionary.images import MAX_IMAGE_BYTES, image_type
from visionary.storage import (
    CACHE_CONTROL,
    MAX_CLASH_RETRIES,
    describe_failure,
    encode_metadata,
    error_code,
    failed_sign_in,
    names_from,
)

# Size and MD5 of a blob's bytes, and its prompt as its metadata holds it (percent-encoded)
Fingerprint = tuple[int, str, str | None]


class Action(Enum):
    MOVED = "moved"
    RESUMED = "resumed"  # the copy was already there: only the source was deleted
    LEFT = "left"
    CONFLICT = "conflict"
    ERROR = "error"


@dataclass(frozen=True)
class Outcome:
    """What became of one blob (in a dry run: what would)."""

    source: str
    action: Action
    target: str | None = None
    reason: str | None = None  # why it was left, or what went wrong

    def line(self, dry_run: bool = False) -> str:
        source, target = _one_line(self.source), _one_line(self.target or "")
        if self.action is Action.MOVED:
            return f"{'would move' if dry_run else 'moved'}: {source} -> {target}"
        if self.action is Action.RESUMED:
            deleted = "the source would be deleted" if dry_run else "source deleted"
            return f"already there: {source} -> {target} ({deleted})"
        if self.action is Action.CONFLICT:
            return (f"conflict: {source} -> {target}: other pictures are there and at the next "
                    f"{MAX_CLASH_RETRIES - 1} milliseconds; source left")
        return f"{self.action.value}: {source}: {self.reason}"


@dataclass
class Report:
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, action: Action) -> int:
        return sum(outcome.action is action for outcome in self.outcomes)

    @property
    def ok(self) -> bool:
        """Nothing failed. Blobs left alone are expected; conflicts and errors need a person."""
        return not (self.count(Action.CONFLICT) or self.count(Action.ERROR))

    def summary(self) -> str:
        counts = ", ".join(
            f"{label} {self.count(action)}"
            for label, action in (("moved", Action.MOVED), ("resumed", Action.RESUMED),
                                  ("left", Action.LEFT), ("conflicts", Action.CONFLICT))
        )
        if errors := self.count(Action.ERROR):
            counts += f", errors {errors}"
        return f"dry run, nothing changed; a run would have: {counts}" if self.dry_run else counts


async def migrate(
    container: ContainerClient,
    dry_run: bool = False,
    progress: Callable[[Outcome], None] | None = None,
) -> Report:
    """Move every Node blob of the container into the scheme, one at a time, in listing order.

    One at a time keeps the outcome of every blob the same from run to run. `progress`
    sees each outcome as it happens, so an operator watching a long run (or one
    interrupted) knows how far it got. Storage that cannot be reached at all, or that refuses
    the credentials (401, 403), raises (an `AzureError`); any other failure on one blob is that
    blob's outcome, and the run goes on.
    """
    report = Report(dry_run)
    planned: dict[str, Fingerprint] = {}  # a dry run's copies by target name; a real run's stay empty
    async for blob in _outside_gallery(container):
        outcome = await _migrate_blob(container, blob, dry_run, planned)
        report.outcomes.append(outcome)
        if progress:
            progress(outcome)
    return report


def describe(error: AzureError, identity: ManagedIdentity = ManagedIdentity()) -> str:
    """A storage failure in a few words: its status and code, never a URL, key or message body.

    A refusal or a failed sign-in says what to mend where the command runs (a workstation, as
    a rule), where the app's own log line points at the Function App's managed identity.
    `identity` is the one the settings name, which decides how the migration signs in.
    """
    if isinstance(error, ResourceModifiedError):
        return "it changed while it was being moved; run again"
    if failed_sign_in(error):  # from the credential: storage was never asked
        return (f"the sign-in to storage failed: the migration signs in {how_it_signs_in(identity, os.environ)}, "
                "as an identity with Storage Blob Data Contributor on the account")
    if isinstance(error, ServiceRequestError):  # no connection: nothing there, or no way there
        return _unreachable(error)
    if _refused(error):
        if error_code(error) == "AuthorizationPermissionMismatch":  # Azure's answer to a missing role
            return (f"{describe_failure(error)}: the identity signed in may not move pictures; "
                    "give it Storage Blob Data Contributor on the account")
        return (f"{describe_failure(error)}: storage refused these credentials or this machine "
                "(check the key, the sign-in, and the account's firewall)")
    return describe_failure(error)


def _unreachable(error: ServiceRequestError) -> str:
    """Where storage was sought, and what to start or check: a closed local port is Azurite not started."""
    # azure-core's aiohttp transport keeps aiohttp's error, which names the host and port.
    host, port = getattr(error.inner_exception, "host", None), getattr(error.inner_exception, "port", None)
    if not (isinstance(host, str) and isinstance(port, int)):
        return f"{describe_failure(error)}: check the storage settings and this machine's network"
    where = f"storage could not be reached at {f'[{host}]' if ':' in host else host}:{port}"
    if host in ("127.0.0.1", "localhost", "::1"):
        return (f"{where}: is Azurite running? Start it (make run starts it on port 10000 with the app; "
                f"npx azurite-blob --blobPort {port} --location .azurite --skipApiVersionCheck --disableTelemetry "
                "on any port)")
    return (f"{where}: check that the storage settings name the account (its name, URL or connection string), "
            "and this machine's network, DNS and proxy")


def _refused(error: AzureError) -> TypeGuard[HttpResponseError]:
    """Storage refused the credentials (401, 403): every later blob would be refused the same."""
    return isinstance(error, HttpResponseError) and error.status_code in (401, 403)


async def _outside_gallery(container: ContainerClient) -> AsyncIterator[BlobProperties]:
    """Every blob not under `gallery/`, without listing the gallery itself.

    Listing by `/` keeps the cost to the Node blobs, however large the gallery is.
    The order is the listing's: on each page, the blobs in folders come first.
    """
    try:
        async for item in container.walk_blobs(delimiter="/"):
            if isinstance(item, BlobProperties):
                yield item
            elif item.name != naming.PREFIX:  # a folder: a prompt with a "/" made it
                async for blob in container.list_blobs(name_starts_with=item.name):
                    yield blob
    except ResourceNotFoundError as error:
        # No container: nothing to migrate. Only that: a client without the right to see a
        # private container also hears 404 (ResourceNotFound), and must not report "moved 0".
        if error_code(error) != "ContainerNotFound":
            raise


async def _migrate_blob(
    container: ContainerClient, blob: BlobProperties, dry_run: bool, planned: dict[str, Fingerprint]
) -> Outcome:
    node = naming.parse_node_name(blob.name)
    if node is None:
        return _left(blob.name, "not a Node name ({prompt}_{milliseconds}.png)")
    if blob.size > MAX_IMAGE_BYTES:
        return _left(blob.name, f"{blob.size} bytes, too large for a picture")
    try:
        return await _move(container, blob.name, node, dry_run, planned)
    except HttpResponseError as error:
        if _refused(error):  # a role or a key, not this blob: stop, rather than read every picture in vain
            raise
        return Outcome(blob.name, Action.ERROR, reason=describe(error))


async def _move(
    container: ContainerClient,
    source: str,
    node: naming.NodeName,
    dry_run: bool,
    planned: dict[str, Fingerprint],
) -> Outcome:
    """Copy the picture to the first of its names that is free, or find it at one already.

    Each name is read in turn: the same bytes and prompt are an earlier copy (resumed), a
    free name takes the copy, another picture sends it on to the next millisecond. Stopping at the first
    free name is what keeps reruns from copying twice: every run fills the names in order,
    so an earlier copy comes before any free name (unless someone deletes a picture at an
    earlier name between the runs).
    """
    try:
        downloaded = await container.download_blob(source)
    except ResourceNotFoundError:
        return _left(source, "gone before it was read: another run moved it")
    data = await downloaded.readall()
    content_type = image_type(data)
    if content_type is None:
        return _left(source, "not a whole PNG, JPEG or WebP image")
    # The extension follows the real format, as it does for new pictures.
    first = naming.name_for(node.prompt, node.ts, content_type)
    # The prompt as the copy's metadata holds it: a prompt too long for metadata is cut there.
    fingerprint = _fingerprint(data, _metadata(node.prompt, first)["prompt"])
    for target in names_from(first):  # as many names as an upload tries on a clash
        there = await _held_at(container, target.blob, planned)
        copied = False
        if there is None:
            if dry_run:
                planned[target.blob] = fingerprint
                return Outcome(source, Action.MOVED, target.blob)
            copied = await _copy(container, target, data, _metadata(node.prompt, target))
            there = await _fingerprint_at(container, target.blob)  # the copy, or what took the name meanwhile
        if there == fingerprint:
            if not dry_run:
                await _delete_source(container, source, downloaded.properties.etag)
            return Outcome(source, Action.MOVED if copied else Action.RESUMED, target.blob)
        if copied:
            return Outcome(source, Action.ERROR, target.blob, f"the copy at {_one_line(target.blob)} "
                           "does not hold the source's bytes and prompt; source left")
    return Outcome(source, Action.CONFLICT, first.blob)


def _metadata(prompt: str, target: naming.BlobName) -> dict[str, str]:
    return encode_metadata(prompt, None, None, target.created_at)  # the model is not known


async def _copy(container: ContainerClient, target: naming.BlobName, data: bytes, metadata: dict[str, str]) -> bool:
    """Create-only upload (If-None-Match: *). False when the name was taken meanwhile."""
    settings = ContentSettings(content_type=target.content_type, cache_control=CACHE_CONTROL)
    try:
        await container.upload_blob(
            target.blob, data, overwrite=False, content_settings=settings, metadata=metadata
        )
    except ResourceExistsError:
        return False
    return True


async def _delete_source(container: ContainerClient, source: str, etag: str) -> None:
    """Delete the source only as it was copied: a blob rewritten since then is kept."""
    try:
        await container.delete_blob(source, etag=etag, match_condition=MatchConditions.IfNotModified)
    except ResourceNotFoundError:
        pass  # another run deleted it after making the same copy
    except ResourceModifiedError:
        # Rewritten since it was copied: kept. Or gone: Azurite answers a conditional delete
        # of a deleted blob with 412, not 404, and then another run deleted it.
        if await container.get_blob_client(source).exists():
            raise


async def _held_at(
    container: ContainerClient, blob: str, planned: dict[str, Fingerprint]
) -> Fingerprint | None:
    """What a name holds as this run sees it: in a dry run, also what it would have copied there."""
    if blob in planned:
        return planned[blob]
    return await _fingerprint_at(container, blob)


async def _fingerprint_at(container: ContainerClient, blob: str) -> Fingerprint | None:
    """A blob's bytes and prompt as stored, read back; None when there is no such blob."""
    try:
        downloaded = await container.download_blob(blob)
        return _fingerprint(await downloaded.readall(), downloaded.properties.metadata.get("prompt"))
    except ResourceNotFoundError:
        return None


def _fingerprint(data: bytes, prompt: str | None) -> Fingerprint:
    return len(data), hashlib.md5(data, usedforsecurity=False).hexdigest(), prompt


def _left(source: str, reason: str) -> Outcome:
    return Outcome(source, Action.LEFT, reason=reason)


def _one_line(name: str) -> str:
    """A blob name on one line: a prompt can hold a newline or another control character."""
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
        for ch in name
    )
