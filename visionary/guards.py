"""Guards of generateImage: a daily cost cap and idempotent retries.

Both keep small JSON records in a private system container (never reachable with
the gallery's SAS, which is scoped to the gallery container) and change them only
with ETag-conditional writes, so every Function instance sharing the storage
account sees one consistent count and one owner per idempotency key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob.aio import BlobClient, ContainerClient

from visionary.errors import ApiError
from visionary.storage import LateWrites, ensure_container, error_code, made_by

log = logging.getLogger("visionary")

# Write ids a count record keeps: how a write whose answer was lost is known to have landed,
# as long as fewer writes than this have come after it.
RECENT_WRITES = 32

MAX_KEY_CHARS = 200
IDEMPOTENCY_WINDOW = timedelta(hours=24)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


# -- ETag-conditional JSON records --------------------------------------------


@dataclass(frozen=True)
class Record:
    data: dict | None  # None: no record yet, or none this app can read
    etag: str | None


async def read_record(container: ContainerClient, blob: BlobClient, well_formed: Callable[[dict], bool]) -> Record:
    """The record and its ETag; creates the (private) system container on first use.

    A record that is not `well_formed` (edited by hand, say) reads as absent, so the next
    write replaces it (its ETag still guards that write) instead of failing every request.
    """
    try:
        download = await blob.download_blob()
    except ResourceNotFoundError as missing:
        if error_code(missing) == "ContainerNotFound":
            await ensure_container(container)
        return Record(None, None)
    try:
        data = json.loads(await download.readall())
    except (ValueError, RecursionError):
        data = None
    if not (isinstance(data, dict) and well_formed(data)):
        log.error("%s/%s is not a record this app wrote; it will be replaced", blob.container_name, blob.blob_name)
        data = None
    return Record(data, download.properties.etag)


async def write_record(blob: BlobClient, data: dict, etag: str | None, write_id: str | None = None) -> str | None:
    """Write only if the record is still as read (etag), or still absent (None).

    The new ETag; None when another writer got there first: the caller reads again.
    """
    body = json.dumps(data, separators=(",", ":"))
    # Names this write: when storage made it but its answer was lost, the SDK's retry meets
    # it as a conflict, and only this tells our own write from another writer's.
    write = {"write_id": write_id or uuid.uuid4().hex}
    try:
        if etag is None:
            written = await blob.upload_blob(body, overwrite=False, metadata=write)
        else:
            written = await blob.upload_blob(
                body, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified, metadata=write
            )
    except (ResourceExistsError, ResourceModifiedError):
        ours = await made_by(blob, "write_id", write["write_id"])
        return ours.etag if ours is not None else None
    return written["etag"]


async def _contention_pause(attempt: int) -> None:
    # Random, growing pauses spread the writers of a busy record apart.
    await asyncio.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))


# -- the daily cost cap ---------------------------------------------------------


class DailyCap:
    """At most `cap` generations per UTC day, across every instance of the app."""

    def __init__(
        self,
        container: ContainerClient,
        cap: int,
        timeout: float | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.container = container
        self.cap = cap
        self.timeout = timeout  # for one change of the count, waiting and contention retries included
        self.now = now
        # A process's changes queue here and one writer applies all that are waiting in a single
        # conditional write: a burst costs a few round trips, not one each. (Racing each other on
        # the ETag, 200 requests at once lost two in three of those races; taking turns, one write
        # each, 640 over eight processes ran half past the storage timeout.)
        self._queue: list[_Change] = []
        self._writer: asyncio.Task[None] | None = None
        self._maybe: _Write | None = None  # a write sent, not yet known to have landed or not
        self._unanswered: list[_Write] = []  # writes whose answers never came: some may have landed

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of today's slots; a generation that fails gives it back."""
        day = await self._take()
        try:
            yield
        except BaseException:
            await _best_effort(self._add(day, -1), "a failed generation's slot is not known to be given back")
            raise

    async def _take(self) -> str:
        day = self.now().strftime("%Y-%m-%d")
        if not await self._add(day, +1):
            raise ApiError.rate_limited(
                f"Today's limit of {self.cap} images is reached; try again after midnight UTC.",
                self._seconds_after(day),
            )
        return day

    async def _add(self, day: str, step: int) -> bool:
        """Move today's count by `step`; False (and no change) if that would pass the cap."""
        applied: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._enqueue(_Change(day, step, applied))
        try:
            async with asyncio.timeout(self.timeout):
                # Given up before the writer took it, a take is dropped; given up after, it is
                # given back once its write is known to have landed. A give-back is always made.
                return await applied
        except TimeoutError:
            granted = applied.done() and not applied.cancelled() and applied.exception() is None and applied.result()
            if step > 0 and granted:
                self._enqueue(_Change(day, -step))  # granted in the very turn this request gave up
            raise

    def _enqueue(self, change: _Change) -> None:
        self._queue.append(change)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())

    async def _write_queued(self) -> None:
        while self._queue:
            waiting, self._queue = self._queue, []
            for day in dict.fromkeys(change.day for change in waiting):
                changes = [change for change in waiting if change.day == day]
                try:
                    async with asyncio.timeout(self.timeout):
                        await self._apply(day, changes)
                except BaseException as error:  # each waiting request fails with it, as if alone
                    if self._maybe is not None:  # a write sent without an answer may still land
                        self._unanswered.append(self._maybe)
                        self._maybe = None
                    elif gives := _gives(changes):
                        # Never sent: the day's next write gives these slots back.
                        self._unanswered.append(_Write(day, uuid.uuid4().hex, 0, gives=gives, sent=False))
                    # Cancelled (the process shuts down): the requests hear storage failed.
                    failure = error if isinstance(error, Exception) else ApiError.storage_unavailable()
                    for change in changes:
                        change.fail(failure)
                    if failure is not error:
                        raise

    async def _apply(self, day: str, changes: list[_Change]) -> None:
        """One conditional write for all `changes`: give-backs first, then takes while under the cap.

        The record keeps the ids of its last writes. So a write whose answer was lost (the SDK's
        retry then meets a conflict, perhaps after another instance wrote) is known to have
        landed, and is not made twice; the takes of an earlier write of ours that landed
        without an answer (its requests were told 503) are given back, once; and the
        give-backs of one that never landed, or never went out, are made.
        """
        changes = sorted(changes, key=lambda change: change.step > 0)
        blob = self.container.get_blob_client(f"cost-guard/{day}.json")
        sent: _Sent | None = None  # this batch's last write, answered as not made
        for attempt in range(100):
            record = await read_record(self.container, blob, _is_count)
            history = _history(record)
            self._maybe = None  # the write before this read has landed (in history) or never will
            if sent is not None and sent.write.write_id in history:  # made after all: its answer was lost
                self._settle(day, sent)
                return
            changes = [change for change in changes if change.wanted]
            landed = [u for u in self._unanswered if u.day == day and u.write_id in history]
            settled = {write_id for u in landed for write_id in u.settles}
            unlanded = [u for u in self._unanswered if u.day == day and _never_landed(u, history, settled)]
            give_back = sum(u.takes for u in landed if u.write_id not in settled) + sum(u.gives for u in unlanded)
            if not changes and not give_back:
                return
            count = max(0, (record.data["count"] if record.data else 0) - give_back)
            granted = []
            for change in changes:
                fits = change.step < 0 or count + change.step <= self.cap
                if fits:
                    count = max(0, count + change.step)
                granted.append(fits)
            if not give_back and not any(granted):  # refusals alone: the count stays as it is
                for change in changes:
                    change.settle(False)
                return
            takes = sum(change.step for change, fits in zip(changes, granted) if fits and change.step > 0)
            write = _Write(day, uuid.uuid4().hex, takes, frozenset(u.write_id for u in landed + unlanded), _gives(changes))
            data = {"count": count, "writes": [*history, write.write_id][-RECENT_WRITES:]}
            self._maybe = write
            written = await write_record(blob, data, record.etag, write.write_id)
            sent = _Sent(write, changes, granted)
            if written:
                self._maybe = None
                self._settle(day, sent)
                return
            await _contention_pause(attempt)
        raise ApiError.storage_unavailable()

    def _settle(self, day: str, sent: _Sent) -> None:
        """Its write made: answer the requests, and give back slots of those that stopped waiting."""
        # The earlier unanswered writes of the day are settled: given back by this write (it saw
        # them land), or they never will land (this write moved the ETag they were made against).
        self._unanswered = [u for u in self._unanswered if u.day != day]
        given_up = 0  # slots taken for requests that stopped waiting (they heard 503)
        for change, fits in zip(sent.changes, sent.granted):
            if not change.settle(fits) and fits and change.step > 0:
                given_up += change.step
        if given_up:
            self._enqueue(_Change(day, -given_up))

    def _seconds_after(self, day: str) -> int:
        """Until `day` (UTC) is over: a refusal answered after midnight may try again at once."""
        midnight = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc) + timedelta(days=1)
        return max(1, math.ceil((midnight - self.now()).total_seconds()))


@dataclass(frozen=True)
class _Change:
    day: str
    step: int  # +1 takes a slot, -n gives n back
    applied: asyncio.Future[bool] | None = None  # whether it was made; None: the cap's own give-back

    @property
    def wanted(self) -> bool:
        """Still to be made: a take while its request waits for it; a give-back always, or a
        slow write (after another instance's) would leave a slot no picture holds."""
        return self.step < 0 or self.applied is None or not self.applied.done()

    def settle(self, made: bool) -> bool:
        """Tell the request; False if it has stopped waiting."""
        if self.applied is None or self.applied.done():
            return self.applied is None
        self.applied.set_result(made)
        return True

    def fail(self, error: Exception) -> None:
        if self.applied is not None and not self.applied.done():
            self.applied.set_exception(error)


@dataclass(frozen=True)
class _Write:
    day: str
    write_id: str
    takes: int  # slots it took: given back if it landed without an answer, as its requests heard 503
    settles: frozenset[str] = frozenset()  # earlier unanswered writes it saw to: their takes, their gives
    gives: int = 0  # slots it gave back: given back again by a later write if it never landed
    sent: bool = True  # False: its batch failed before it was sent, so its gives are still to make


def _gives(changes: list[_Change]) -> int:
    """The slots these changes give back."""
    return -sum(change.step for change in changes if change.step < 0)


def _never_landed(write: _Write, history: list[str], settled: set[str]) -> bool:
    """Whether an unanswered write of ours is known not to have landed: its id is not in the
    record's history, and no write that landed saw to it. (Should it land later, the write made
    on this read fails its ETag condition, and the next read sees it.) A full history may have
    lost the id of one that landed: its gives are then not made again, so a slot may stay
    taken, but one is never freed twice."""
    if write.write_id in history or write.write_id in settled:
        return False
    return not write.sent or len(history) < RECENT_WRITES


@dataclass(frozen=True)
class _Sent:
    write: _Write
    changes: list[_Change]
    granted: list[bool]


def _history(record: Record) -> list[str]:
    """The ids of the record's last writes (none in a record from before they were kept)."""
    writes = record.data.get("writes") if record.data else None
    return [w for w in writes if isinstance(w, str)] if isinstance(writes, list) else []


def _is_count(data: dict) -> bool:
    count = data.get("count")
    return isinstance(count, int) and not isinstance(count, bool) and count >= 0


# -- idempotency -------------------------------------------------------------


def check_key(key: str | None) -> str | None:
    """The Idempotency-Key header: 1..200 printable ASCII characters, or absent."""
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_CHARS or not all(" " <= ch <= "~" for ch in key):
        raise ApiError.invalid_parameter(
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters."
        )
    return key


def _any_answer(answer: dict) -> bool:
    return True


class IdempotencyLedger:
    """The first request with a key does the work; repeats within 24 h get its answer.

    A marker blob per key is claimed create-only. While its owner works, repeats
    wait (bounded) and then get 409 `in_progress`; a repeat with another request
    (another fingerprint: for generateImage, its prompt and size) gets 409
    `idempotency_conflict`. A failed first request removes its marker, so the
    client's retry starts afresh; a marker whose owner vanished (crashed) is taken
    over once it is older than `stale_after`.
    """

    def __init__(
        self,
        container: ContainerClient,
        wait_seconds: float = 30.0,
        stale_after: timedelta = timedelta(minutes=10),
        poll_seconds: float = 0.25,
        timeout: float | None = None,
        readable: Callable[[dict], bool] = _any_answer,
        late_writes: LateWrites | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.container = container
        self.now = now  # the time markers are written with and aged by
        self.readable = readable  # whether a recorded answer can be given again (not edited by hand)
        self.late_writes = late_writes or LateWrites()  # claims sent without an answer
        self.timeout = timeout  # for each round trip to the marker
        self.wait_seconds = wait_seconds
        self.stale_after = stale_after
        self.poll_seconds = poll_seconds

    def _is_marker(self, data: dict) -> bool:
        """Whether a record has the shape `once` writes: a claim, or a claim with its answer."""
        try:
            since = datetime.fromisoformat(data["since"])
        except (KeyError, TypeError, ValueError):
            return False
        answer = data.get("answer")
        return (
            since.tzinfo is not None
            and isinstance(data.get("fingerprint"), str)
            and (
                data.get("state") == "running"
                or (data.get("state") == "done" and isinstance(answer, dict) and self.readable(answer))
            )
        )

    async def once(
        self, key: str, fingerprint: str, work: Callable[[], Awaitable[dict]], max_wait: float | None = None
    ) -> dict:
        """The answer of `work` for this key: done now, or recorded by an earlier request.

        A repeat waits for a running first request `wait_seconds` at most, and no longer
        than `max_wait` seconds: what its own request's deadline leaves it.
        """
        blob = self.container.get_blob_client(f"idempotency/{hashlib.sha256(key.encode()).hexdigest()}.json")
        waits = self.wait_seconds if max_wait is None else min(self.wait_seconds, max_wait)
        deadline = time.monotonic() + waits
        while True:
            async with asyncio.timeout(self.timeout):
                record = await read_record(self.container, blob, self._is_marker)
            if record.data is None or self._claimable(record.data, fingerprint):
                running = {"fingerprint": fingerprint, "state": "running", "since": self.now().isoformat()}
                write_id = uuid.uuid4().hex
                try:
                    async with asyncio.timeout(self.timeout):
                        claim = await write_record(blob, running, record.etag, write_id)
                except (TimeoutError, AzureError):
                    # Storage may still make the claim: with no owner, it would keep the key
                    # "in progress" until stale. Removed once storage answers, if it is ours.
                    self.late_writes.remove(blob, "write_id", write_id, "an idempotency claim")
                    raise
                if claim:
                    return await self._work(blob, claim, fingerprint, work)
                continue  # someone else claimed it in between: look again
            if record.data["state"] == "done":
                return record.data["answer"]
            if time.monotonic() >= deadline:
                raise ApiError.in_progress()
            await asyncio.sleep(self.poll_seconds)

    def _claimable(self, marker: dict, fingerprint: str) -> bool:
        """Whether a marker may be taken over (an answer past its window, a claim gone stale);
        a live one of another request (prompt or size) is an idempotency conflict."""
        age = self.now() - datetime.fromisoformat(marker["since"])
        if marker["state"] == "done" and age > IDEMPOTENCY_WINDOW:
            return True
        if marker["state"] == "running" and age > self.stale_after:
            return True
        if marker["fingerprint"] != fingerprint:
            raise ApiError.idempotency_conflict()
        return False

    async def _work(
        self, blob: BlobClient, claim: str, fingerprint: str, work: Callable[[], Awaitable[dict]]
    ) -> dict:
        """Do the work under our claim (its ETag); the marker changes only while it is still ours."""
        try:
            answer = await work()
        except BaseException:
            try:
                await _release(blob, claim, self.timeout)
            except (TimeoutError, AzureError):
                # Left, the claim would answer the client's retries 409 in_progress until stale.
                log.warning("storage failed during cleanup: a failed request's key is freed once storage answers")
                self.late_writes.retry(
                    lambda: _release(blob, claim, self.timeout), "the release of a failed request's key"
                )
            raise
        done = {"fingerprint": fingerprint, "state": "done", "since": self.now().isoformat(), "answer": answer}
        write_id = uuid.uuid4().hex  # the same for the later tries: a first try that landed late is ours
        try:
            recorded = await _record(blob, done, claim, write_id, self.timeout)
        except (TimeoutError, AzureError):
            # The picture is stored: answer with it. Repeats get 409 in_progress until storage takes
            # the record; left unrecorded, the claim went stale and a repeat drew a second picture.
            log.warning("idempotency marker not recorded as done; it is recorded once storage answers")
            self.late_writes.retry(
                lambda: _record(blob, done, claim, write_id, self.timeout), "the record of a request's answer"
            )
        else:
            if recorded is None:  # outlived stale_after: a repeat took the key over, its record stands
                log.warning("idempotency claim was taken over while its work ran; its record is kept")
        return answer


async def _record(blob: BlobClient, done: dict, claim: str, write_id: str, timeout: float | None) -> str | None:
    """Record the answer over our claim (its ETag); None if the marker is no longer that claim
    (taken over once stale: the new owner's record stands)."""
    async with asyncio.timeout(timeout):
        return await write_record(blob, done, claim, write_id)


async def _release(blob: BlobClient, claim: str, timeout: float | None) -> None:
    """Remove our claim, and only ours: a claim taken over meanwhile belongs to another request."""
    async with asyncio.timeout(timeout):
        try:
            await blob.delete_blob(etag=claim, match_condition=MatchConditions.IfNotModified)
        except (ResourceNotFoundError, ResourceModifiedError):
            pass


async def _best_effort(cleanup: Awaitable[object], consequence: str) -> None:
    """Clean up after a failed request without letting a storage failure replace its error
    (the model's 502 must not reach the caller as a 503 because a give-back failed too)."""
    try:
        await cleanup
    except (TimeoutError, AzureError, ApiError):  # ApiError: a record too contended to write
        log.warning("storage failed during cleanup: %s", consequence)


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Guards:
    """What stands between generateImage and the model: the cap, and the ledger of keys."""

    cap: DailyCap | None  # None: no daily cap
    ledger: IdempotencyLedger
