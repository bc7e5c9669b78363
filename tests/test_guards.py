import asyncio
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from tests.azurite import Azurite, free_port
from tests.conftest import ROOT_ENV, Api, blob_names, eventually
from tests.lossy_storage import LossyStorage
from tests.openai_server import OpenAIServer
from tests.served import ServedApp
from visionary.clients import Clients
from visionary.errors import ApiError
from visionary import guards
from visionary.guards import DailyCap, IdempotencyLedger, fingerprint
from visionary.settings import Settings
from visionary.storage import open_service_client

PROMPT = "A lighthouse at dusk, oil painting"


@asynccontextmanager
async def system_container(azurite: Azurite, name: str) -> AsyncIterator[ContainerClient]:
    """The app's bookkeeping container, looked at from behind its back."""
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        yield service.get_container_client(name)


# -- the daily cap -----------------------------------------------------------


async def test_the_cap_holds_across_two_processes(azurite: Azurite, container: ContainerClient):
    env = {
        **ROOT_ENV,
        "VISIONARY_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "VISIONARY_CONTAINER": container.container_name,
        "VISIONARY_SYSTEM_CONTAINER": f"system-{uuid.uuid4().hex[:12]}",
        "VISIONARY_PROVIDER": "offline",
        "VISIONARY_MAX_IMAGES_PER_DAY": "10",
    }
    hosts = [ServedApp.start(free_port(), env), ServedApp.start(free_port(), env)]
    now = datetime.now(timezone.utc)
    to_midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0) - now
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            answers = await asyncio.gather(*[
                http.post(f"{hosts[i % 2].url}/api/generateImage", json={"prompt": f"Picture {i}"}) for i in range(40)
            ])
    finally:
        for host in hosts:
            host.stop()
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] * 10 + [429] * 30
    for answer in answers:
        if answer.status_code == 429:
            assert answer.json()["code"] == "rate_limited"
            assert 0 < int(answer.headers["retry-after"]) <= to_midnight.total_seconds() + 1
    assert len(await blob_names(container, "gallery/")) == 10


async def test_a_failed_generation_gives_its_slot_back(api: Api, openai_env: OpenAIServer, container, monkeypatch):
    monkeypatch.setenv("VISIONARY_MAX_IMAGES_PER_DAY", "2")
    monkeypatch.setenv("VISIONARY_SYSTEM_CONTAINER", f"system-{uuid.uuid4().hex[:12]}")
    openai_env.behaviour.error = "content_policy"
    for _ in range(3):
        assert (await api.generate({"prompt": PROMPT})).status == 400
    openai_env.behaviour.error = None
    assert [(await api.generate({"prompt": PROMPT})).status for _ in range(3)] == [201, 201, 429]
    assert len(await blob_names(container, "gallery/")) == 2


async def test_a_count_edited_by_hand_is_replaced_not_a_500(
    api: Api, openai_env: OpenAIServer, azurite: Azurite, monkeypatch, caplog
):
    system = f"system-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("VISIONARY_MAX_IMAGES_PER_DAY", "5")
    monkeypatch.setenv("VISIONARY_SYSTEM_CONTAINER", system)
    assert (await api.generate({"prompt": PROMPT})).status == 201  # the day's record exists
    async with system_container(azurite, system) as records:
        [day] = await blob_names(records, "cost-guard/")
        for garbage in (b"not json", b'{"count": "three"}', b"[]"):
            await records.upload_blob(day, garbage, overwrite=True)
            assert (await api.generate({"prompt": PROMPT})).status == 201
            assert json.loads(await (await records.download_blob(day)).readall())["count"] == 1
    assert "is not a record this app wrote" in caplog.text


async def day_count(azurite: Azurite, container_name: str) -> int:
    async with system_container(azurite, container_name) as records:
        [day] = await blob_names(records, "cost-guard/")
        return json.loads(await (await records.download_blob(day)).readall())["count"]


async def counts(azurite: Azurite, container_name: str, count: int) -> bool:
    return await day_count(azurite, container_name) == count


async def test_a_failed_generation_keeps_its_error_when_its_slot_cannot_be_given_back(
    container: ContainerClient, monkeypatch
):
    # Other writers win every race for the day's record, so the give-back runs out of attempts:
    # the caller must still hear what went wrong with the generation, not "storage unavailable".
    cap = DailyCap(container, 5, timeout=10)
    with pytest.raises(ApiError) as raised:
        async with cap.slot():
            monkeypatch.setattr(guards, "write_record", _always_contended)
            monkeypatch.setattr(guards, "_contention_pause", _no_pause)
            raise ApiError.upstream_error()
    assert raised.value.code == "upstream_error"


async def _always_contended(*args: object, **kwargs: object) -> None:
    return None  # the ETag had moved on: another writer's change landed first


async def _no_pause(attempt: int) -> None:
    pass


async def test_a_count_change_whose_answer_was_lost_is_made_once(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # Storage makes the change, its answer is lost, and the SDK's retry meets the change as a
    # conflict: counted again, it would let the day pass its cap (or lose a slot for good).
    async def count() -> int:
        return await day_count(azurite, container_name)

    async with open_service_client(Settings.from_env().require_storage()) as service:
        cap = DailyCap(service.get_container_client(container_name), 5, timeout=10)
        async with cap.slot():
            pass
        lossy_storage.lose_answer("PUT", "/cost-guard/", conditional=True)
        async with cap.slot():
            pass
        assert await count() == 2
        with pytest.raises(ApiError):
            async with cap.slot():
                lossy_storage.lose_answer("PUT", "/cost-guard/", conditional=True)
                raise ApiError.upstream_error()  # the slot is given back; that answer is lost too
        assert await count() == 2
    assert len(lossy_storage.lost) == 2


async def test_slots_taken_for_requests_that_stopped_waiting_are_given_back(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # The count's writes answer 1 s late and a change may take 1.5 s: the first request gets
    # its slot; ten behind it stop waiting (503) while their write is on its way, and lands.
    # (Each step half a second clear of a timeout: the ten start once the first write is sent.)
    async with open_service_client(Settings.from_env().require_storage()) as service:
        cap = DailyCap(service.get_container_client(container_name), 100, timeout=1.5)
        lossy_storage.delay_answer("PUT", "/cost-guard/", 1.0, count=2)
        first = asyncio.create_task(generation(cap))
        await lossy_storage.answer_held()  # its write is made, its answer on its way
        statuses = await asyncio.gather(*[generation(cap) for _ in range(10)], return_exceptions=True)
        assert await first == 201 and all(isinstance(status, TimeoutError) for status in statuses)
        await lossy_storage.settled()  # their write was made, and its answer came
        assert await eventually(lambda: counts(azurite, container_name, 1))  # their slots given back


async def test_a_write_whose_answer_never_came_but_landed_is_given_back(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # The answer comes after the writer itself gave up: the next read finds the write landed.
    async with open_service_client(Settings.from_env().require_storage()) as service:
        cap = DailyCap(service.get_container_client(container_name), 100, timeout=1)
        assert await generation(cap) == 201
        lossy_storage.delay_answer("PUT", "/cost-guard/", 2.0, conditional=True)
        statuses = await asyncio.gather(*[generation(cap) for _ in range(5)], return_exceptions=True)
        assert all(isinstance(status, TimeoutError) for status in statuses)
        assert await day_count(azurite, container_name) == 6  # storage made the write
        assert await generation(cap) == 201
        assert await day_count(azurite, container_name) == 2  # the five told 503 hold no slot


async def test_a_take_granted_in_the_very_turn_its_request_timed_out_is_given_back(
    container: ContainerClient, monkeypatch
):
    # The count's write is made, and its answer handled in the same turn of the event loop as the
    # request's timeout: the request hears 503 though its slot was granted, so it must give it back.
    real_write = guards.write_record

    async def answered_as_time_runs_out(*args, **kwargs):
        written = await real_write(*args, **kwargs)
        time.sleep(0.6)  # the loop is busy past both timeouts with the answer in hand ...
        await asyncio.sleep(0)  # ... so the grant and the request's timeout come in one turn
        return written

    monkeypatch.setattr(guards, "write_record", answered_as_time_runs_out)
    cap = DailyCap(container, 1, timeout=0.5)
    with pytest.raises(TimeoutError):
        await generation(cap)
    monkeypatch.setattr(guards, "write_record", real_write)
    assert await generation(cap) == 201  # at the cap of 1, only with that slot given back
    [day] = await blob_names(container, "cost-guard/")
    assert json.loads(await (await container.download_blob(day)).readall())["count"] == 1


@asynccontextmanager
async def two_instances(azurite: Azurite, container_name: str, cap: int) -> AsyncIterator[tuple[DailyCap, DailyCap]]:
    """The cap of instance A, through the lossy proxy (1 s a change), and of B, straight on Azurite."""
    async with open_service_client(Settings.from_env().require_storage()) as service, \
            system_container(azurite, container_name) as records:
        yield DailyCap(service.get_container_client(container_name), cap, timeout=1), DailyCap(records, cap)


async def test_a_give_back_whose_answer_was_lost_while_another_instance_wrote_is_made_once(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # Cap 1. A gives its slot back; storage makes that write, and before its lost answer's retry,
    # instance B takes the freed slot. Applied again, the give-back would free B's slot for C.
    async with two_instances(azurite, container_name, 1) as (a, b), \
            two_instances(azurite, container_name, 1) as (_, c):
        b_took: list[int] = []
        with pytest.raises(ApiError):
            async with a.slot():
                lossy_storage.lose_answer(
                    "PUT", "/cost-guard/", meanwhile=lambda: _record(b_took, generation(b)))
                raise ApiError.upstream_error()  # A's model failed: its slot goes back
        assert b_took == [201]
        assert await generation(c) == 429
        assert await day_count(azurite, container_name) == 1


async def test_a_give_back_that_ran_out_of_time_is_made_by_the_next_write(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # Cap 2. Storage is slow, not away: A's give-back meets B's write (a conflict), and its
    # second read answers after the change's time (1 s) ran out. The slot is still A's to give.
    async with two_instances(azurite, container_name, 2) as (a, b):

        async def b_takes_meanwhile() -> int:
            await lossy_storage.answer_held()  # A's read is made; B writes before A hears it
            return await generation(b)

        with pytest.raises(ApiError):
            async with a.slot():
                lossy_storage.delay_answer("GET", "/cost-guard/", 0.6, count=2)
                b_took = asyncio.create_task(b_takes_meanwhile())
                raise ApiError.upstream_error()  # A's model failed
        assert await b_took == 201
        await lossy_storage.settled()  # the late read goes by
        assert await day_count(azurite, container_name) == 2  # B's, and the one A could not give back
        assert await generation(a) == 201  # its write gives that one back
        assert await day_count(azurite, container_name) == 2


async def test_a_give_back_that_could_not_even_read_the_count_is_made_by_the_next_write(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    async with two_instances(azurite, container_name, 1) as (a, _):
        with pytest.raises(ApiError):
            async with a.slot():
                lossy_storage.delay_answer("GET", "/cost-guard/", 1.5)  # past the change's 1 s
                raise ApiError.upstream_error()
        await lossy_storage.settled()  # the late read goes by
        assert await day_count(azurite, container_name) == 1
        assert await generation(a) == 201  # at the cap of 1, only with that slot given back
        assert await day_count(azurite, container_name) == 1


async def one_held_and_two_landed_unanswered(a: DailyCap, lossy_storage: LossyStorage) -> None:
    """A holds one slot; two more of its takes land, but their answer comes after A gave up (503)."""
    assert await generation(a) == 201
    lossy_storage.delay_answer("PUT", "/cost-guard/", 2.0, conditional=True)
    unanswered = await asyncio.gather(generation(a), generation(a), return_exceptions=True)
    assert all(isinstance(failure, TimeoutError) for failure in unanswered)
    await lossy_storage.settled()  # the late answer goes by


async def test_a_landed_write_is_given_back_once_whatever_other_instances_write(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # Cap 3. A holds one slot; two more takes of A land without an answer (their requests heard
    # 503). A's next take gives those two back in its write, whose answer is lost while
    # instance B takes. Given back twice, B would get a second slot: four under a cap of 3.
    async with two_instances(azurite, container_name, 3) as (a, b):
        await one_held_and_two_landed_unanswered(a, lossy_storage)
        assert await day_count(azurite, container_name) == 3
        b_took: list[int] = []
        lossy_storage.lose_answer("PUT", "/cost-guard/", meanwhile=lambda: _record(b_took, generation(b)))
        assert await generation(a) == 201
        assert b_took == [201]
        assert await generation(b) == 429  # A holds two, B one
        assert await day_count(azurite, container_name) == 3


async def test_a_landed_write_under_another_instances_write_is_still_given_back(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # The record keeps its last writes' ids: A finds its unanswered write though B wrote since.
    async with two_instances(azurite, container_name, 100) as (a, b):
        await one_held_and_two_landed_unanswered(a, lossy_storage)
        assert await generation(b) == 201  # writes on top of it
        assert await generation(a) == 201
        assert await day_count(azurite, container_name) == 3  # held: A's two and B's one


async def test_a_landed_write_is_given_back_by_the_next_write_only(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # A's next write gives back the two takes whose requests heard 503; the writes after it
    # must not give them back again (each would free two slots no picture gave up).
    async with open_service_client(Settings.from_env().require_storage()) as service:
        a = DailyCap(service.get_container_client(container_name), 100, timeout=1)
        await one_held_and_two_landed_unanswered(a, lossy_storage)
        assert await generation(a) == 201
        assert await day_count(azurite, container_name) == 2
        assert await generation(a) == 201
        assert await day_count(azurite, container_name) == 3


async def test_a_landed_write_under_30_writes_of_another_instance_is_still_given_back(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # The record keeps the ids of its last 32 writes (the README's promise): A's two, B's thirty.
    async with two_instances(azurite, container_name, 100) as (a, b):
        await one_held_and_two_landed_unanswered(a, lossy_storage)
        for _ in range(30):
            assert await generation(b) == 201
        assert await generation(a) == 201
        assert await day_count(azurite, container_name) == 32  # held: A's two and B's thirty


async def test_a_give_back_whose_own_write_never_landed_is_tried_again(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # The write giving back two unanswered takes is itself lost: the next one gives them back.
    async with open_service_client(Settings.from_env().require_storage()) as service:
        a = DailyCap(service.get_container_client(container_name), 100, timeout=1)
        await one_held_and_two_landed_unanswered(a, lossy_storage)
        lossy_storage.drop("PUT", "/cost-guard/", 3.0)  # the write giving them back never reaches storage
        with pytest.raises(TimeoutError):
            await generation(a)
        await lossy_storage.settled()  # its 500 goes by
        assert await generation(a) == 201
        assert await day_count(azurite, container_name) == 2


async def test_a_landed_give_back_whose_id_left_the_records_history_is_not_made_again(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # A's give-back lands, its answer after A gave up; then B writes more times than the record
    # keeps ids of. A cannot tell that give-back landed: made again, a slot would be freed twice.
    async with two_instances(azurite, container_name, 100) as (a, b):
        with pytest.raises(ApiError):
            async with a.slot():
                lossy_storage.delay_answer("PUT", "/cost-guard/", 2.0, conditional=True)
                raise ApiError.upstream_error()  # A's model failed: its slot goes back, unanswered
        await lossy_storage.settled()  # the late answer goes by
        assert await day_count(azurite, container_name) == 0
        for _ in range(guards.RECENT_WRITES):
            assert await generation(b) == 201
        assert await generation(a) == 201
        assert await day_count(azurite, container_name) == guards.RECENT_WRITES + 1


async def _record(into: list[int], status: Awaitable[int]) -> None:
    into.append(await status)


async def test_refusals_at_the_cap_write_nothing(container: ContainerClient):
    cap = DailyCap(container, 1)
    assert await generation(cap) == 201
    [day] = await blob_names(container, "cost-guard/")
    etag = (await container.get_blob_client(day).get_blob_properties()).etag
    assert await asyncio.gather(*[generation(cap) for _ in range(30)]) == [429] * 30
    assert (await container.get_blob_client(day).get_blob_properties()).etag == etag


async def test_the_cap_counts_per_utc_day_and_its_retry_after_reaches_midnight(container: ContainerClient):
    now = datetime(2026, 3, 1, 23, 59, 30, tzinfo=timezone.utc)
    cap = DailyCap(container, 1, now=lambda: now)
    async with cap.slot():
        pass
    with pytest.raises(ApiError) as refused:
        async with cap.slot():
            pass
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "30"
    now = datetime(2026, 3, 2, 0, 0, 1, tzinfo=timezone.utc)
    async with cap.slot():  # a new day, a new count
        pass
    assert await blob_names(container) == ["cost-guard/2026-03-01.json", "cost-guard/2026-03-02.json"]


async def test_a_refusal_answered_after_midnight_may_try_again_at_once(
    lossy_storage: LossyStorage, container_name: str
):
    clock = [datetime(2026, 3, 1, 23, 59, 59, 800_000, tzinfo=timezone.utc)]
    async with open_service_client(Settings.from_env().require_storage()) as service:
        cap = DailyCap(service.get_container_client(container_name), 1, now=lambda: clock[0])
        assert await generation(cap) == 201
        lossy_storage.delay_answer("GET", "/cost-guard/", 0.5)  # the refusal's read crosses midnight
        asyncio.get_running_loop().call_later(0.2, clock.__setitem__, 0, clock[0] + timedelta(seconds=0.3))
        with pytest.raises(ApiError) as refused:
            async with cap.slot():
                pass
        assert refused.value.headers["Retry-After"] == "1"  # not a day: the new day's slots are open
        assert await generation(cap) == 201


async def generation(cap: DailyCap, drawing: float = 0.0) -> int:
    """A generation's status as far as the cap decides it; the model takes `drawing` seconds."""
    try:
        async with cap.slot():
            await asyncio.sleep(drawing)
            return 201
    except ApiError as refused:
        return refused.status


def count_writes(monkeypatch) -> list[int]:
    """The count's conditional writes, attempted, as the cap sends them to storage."""
    writes: list[int] = []
    real_write = guards.write_record

    async def counted(*args, **kwargs):
        writes.append(1)
        return await real_write(*args, **kwargs)

    monkeypatch.setattr(guards, "write_record", counted)
    return writes


async def test_a_burst_in_one_process_queues_for_the_count_instead_of_timing_out(
    container: ContainerClient, monkeypatch
):
    # Racing each other on the count's ETag, two in three of 200 such requests ran out of time (503).
    writes = count_writes(monkeypatch)
    cap = DailyCap(container, 1000, timeout=10)
    assert await asyncio.gather(*[generation(cap, drawing=0.2) for _ in range(200)]) == [201] * 200
    [day] = await blob_names(container, "cost-guard/")
    assert json.loads(await (await container.download_blob(day)).readall())["count"] == 200
    assert len(writes) <= 5, len(writes)  # the waiting requests' takes go in one write together


async def test_bursts_from_several_processes_each_cost_a_few_writes_not_one_a_request(
    container: ContainerClient, monkeypatch
):
    # Four processes' caps on one count, 150 requests each, and a 3 s storage timeout. One write
    # a request (taking turns) needed 600 round trips in a row, and most ran out of time (503).
    writes = count_writes(monkeypatch)
    caps = [DailyCap(container, 10_000, timeout=3) for _ in range(4)]
    statuses = await asyncio.gather(*[generation(cap, drawing=0.2) for cap in caps for _ in range(150)])
    assert statuses == [201] * 600
    [day] = await blob_names(container, "cost-guard/")
    assert json.loads(await (await container.download_blob(day)).readall())["count"] == 600
    assert len(writes) <= 40, len(writes)  # tries that lost a race to another process included


async def test_a_burst_over_the_cap_gets_exactly_the_slots_left(container: ContainerClient):
    cap = DailyCap(container, 7)
    statuses = await asyncio.gather(*[generation(cap) for _ in range(20)])
    assert sorted(statuses) == [201] * 7 + [429] * 13


async def test_a_slot_given_back_beside_a_take_goes_to_that_take(container: ContainerClient):
    cap = DailyCap(container, 1)
    holding, model_fails = asyncio.Event(), asyncio.Event()

    async def failing_generation() -> None:
        async with cap.slot():
            holding.set()
            await model_fails.wait()
            raise ApiError.upstream_error()

    first = asyncio.create_task(failing_generation())
    await holding.wait()
    second = asyncio.create_task(generation(cap))  # asks just before the first gives its slot back
    model_fails.set()
    with pytest.raises(ApiError):
        await first
    assert await second == 201  # give-backs are applied first, so the day's one slot is the second's
    [day] = await blob_names(container, "cost-guard/")
    assert json.loads(await (await container.download_blob(day)).readall())["count"] == 1


# -- idempotency -------------------------------------------------------------


async def age_marker(container: ContainerClient, age: timedelta) -> None:
    """Move the one idempotency marker's time back by `age`, as if written that long ago."""
    [name] = await blob_names(container, "idempotency/")
    blob = container.get_blob_client(name)
    marker = json.loads(await (await blob.download_blob()).readall())
    marker["since"] = (datetime.now(timezone.utc) - age).isoformat()
    await blob.upload_blob(json.dumps(marker), overwrite=True)


def counted_work() -> Callable[[], Awaitable[dict]]:
    """Work whose answer says how many times it has run."""
    runs = []

    async def work() -> dict:
        runs.append(1)
        return {"run": len(runs)}

    return work


async def test_a_key_is_honoured_for_24_hours_then_does_the_work_again(container: ContainerClient):
    answered = datetime(2026, 11, 21, 9, 30, tzinfo=timezone.utc)
    clock = [answered]
    ledger, work = IdempotencyLedger(container, now=lambda: clock[0]), counted_work()
    assert await ledger.once("order-7", "same request", work) == {"run": 1}
    clock[0] = answered + timedelta(hours=24, seconds=-1)
    assert await ledger.once("order-7", "same request", work) == {"run": 1}
    clock[0] = answered + timedelta(hours=24, seconds=1)
    assert await ledger.once("order-7", "same request", work) == {"run": 2}


async def test_a_key_past_its_24_hours_is_free_for_another_request_too(container: ContainerClient):
    answered = datetime(2026, 11, 21, 9, 30, tzinfo=timezone.utc)
    clock = [answered]
    ledger, work = IdempotencyLedger(container, now=lambda: clock[0]), counted_work()
    assert await ledger.once("order-8", "first request", work) == {"run": 1}
    clock[0] = answered + timedelta(hours=24, seconds=-1)
    with pytest.raises(ApiError) as conflict:
        await ledger.once("order-8", "another request", work)
    assert conflict.value.code == "idempotency_conflict"
    clock[0] = answered + timedelta(hours=24, seconds=1)
    assert await ledger.once("order-8", "another request", work) == {"run": 2}


async def test_a_crashed_owners_claim_is_taken_over_once_stale(container: ContainerClient):
    ledger, work = IdempotencyLedger(container, wait_seconds=0.2, poll_seconds=0.05), counted_work()
    claim = {"fingerprint": "same request", "state": "running", "since": datetime.now(timezone.utc).isoformat()}
    await container.create_container()
    await container.upload_blob(f"idempotency/{hashlib.sha256(b'crashed').hexdigest()}.json", json.dumps(claim))
    started = time.monotonic()
    with pytest.raises(ApiError) as waiting:  # a live owner: wait, then 409
        await ledger.once("crashed", "same request", work)
    assert waiting.value.code == "in_progress"
    assert time.monotonic() - started >= ledger.wait_seconds  # its whole wait (the ledger's own clock)
    await age_marker(container, ledger.stale_after + timedelta(minutes=1))
    assert await ledger.once("crashed", "same request", work) == {"run": 1}


@pytest.fixture
def keyed_env(openai_env: OpenAIServer, monkeypatch) -> OpenAIServer:
    monkeypatch.setenv("VISIONARY_SYSTEM_CONTAINER", f"system-{uuid.uuid4().hex[:12]}")
    return openai_env


async def test_a_repeat_gets_the_same_answer_without_a_second_model_call(
    api: Api, keyed_env: OpenAIServer, container, caplog
):
    caplog.set_level(logging.INFO)
    key = {"Idempotency-Key": "order-42"}
    first = await api.generate({"prompt": PROMPT}, headers=key)
    again = await api.generate({"prompt": PROMPT}, headers=key)
    # both log lines name the picture and the model that drew it
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("generateImage status=201")]
    assert len(lines) == 2 and all("model=gpt-image-2" in line and "blob=" in line for line in lines), lines
    assert first.status == again.status == 201
    assert again.json()["blob"] == first.json()["blob"]
    assert again.json()["prompt"] == PROMPT and again.json()["url"].split("?")[0] == first.json()["url"].split("?")[0]
    assert len(keyed_env.model_calls()) == 1
    assert len(await blob_names(container, "gallery/")) == 1


async def test_concurrent_duplicates_make_one_model_call(api: Api, keyed_env: OpenAIServer, container):
    keyed_env.behaviour.delay = 0.5  # the first is still drawing when the others arrive
    key = {"Idempotency-Key": "double-click"}
    answers = await asyncio.gather(*[api.generate({"prompt": PROMPT}, headers=key) for _ in range(5)])
    assert [a.status for a in answers] == [201] * 5
    assert len({a.json()["blob"] for a in answers}) == 1
    assert len(keyed_env.model_calls()) == 1
    assert len(await blob_names(container, "gallery/")) == 1


async def test_the_same_key_with_another_prompt_is_a_conflict(api: Api, keyed_env: OpenAIServer):
    key = {"Idempotency-Key": "reused"}
    assert (await api.generate({"prompt": PROMPT}, headers=key)).status == 201
    other = await api.generate({"prompt": "Something else entirely"}, headers=key)
    assert other.status == 409
    assert other.json()["code"] == "idempotency_conflict"
    assert len(keyed_env.model_calls()) == 1


async def test_a_failed_first_request_can_be_retried_with_its_key(api: Api, keyed_env: OpenAIServer):
    key = {"Idempotency-Key": "retry-me"}
    keyed_env.behaviour.error = "content_policy"
    assert (await api.generate({"prompt": PROMPT}, headers=key)).status == 400
    keyed_env.behaviour.error = None
    assert (await api.generate({"prompt": PROMPT}, headers=key)).status == 201


async def test_a_slow_first_request_makes_a_repeat_wait_then_409(api: Api, keyed_env: OpenAIServer, monkeypatch):
    from visionary import clients

    keyed_env.behaviour.delay = 1.5
    ledger = clients.current().guards.ledger
    ledger.wait_seconds = 0.3  # a short bound, for the test
    key = {"Idempotency-Key": "slow"}
    first = asyncio.create_task(api.generate({"prompt": PROMPT}, headers=key))
    while not keyed_env.model_calls():  # it holds the key and draws (a fixed pause raced the claim)
        await asyncio.sleep(0.01)
    started = time.monotonic()
    repeat = await api.generate({"prompt": PROMPT}, headers=key)
    assert repeat.status == 409 and repeat.json()["code"] == "in_progress"
    assert time.monotonic() - started >= ledger.wait_seconds  # its whole wait (the ledger's own clock)
    assert (await first).status == 201


async def test_a_repeat_waits_for_a_running_first_request_only_within_its_deadline(
    api: Api, keyed_env: OpenAIServer, azurite: Azurite, monkeypatch
):
    monkeypatch.setenv("VISIONARY_REQUEST_DEADLINE_SECONDS", "3")
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "0.5")
    # The first request's claim, still fresh: its instance died a moment ago.
    claim = {"fingerprint": fingerprint(PROMPT, "1024x1024"), "state": "running",
             "since": datetime.now(timezone.utc).isoformat()}
    async with system_container(azurite, os.environ["VISIONARY_SYSTEM_CONTAINER"]) as system:
        await system.create_container()
        await system.upload_blob(f"idempotency/{hashlib.sha256(b'orphaned').hexdigest()}.json", json.dumps(claim))
    started = time.monotonic()
    repeat = await api.generate({"prompt": PROMPT}, headers={"Idempotency-Key": "orphaned"})
    elapsed = time.monotonic() - started
    assert (repeat.status, repeat.json()["code"]) == (409, "in_progress")
    assert 1.5 < elapsed < 3, elapsed  # it waited, but answered within its 3 s, not after the ledger's 30
    assert keyed_env.model_calls() == []


@pytest.mark.parametrize("edit", [
    pytest.param(lambda marker: {"state": "done"}, id="no-claim"),
    pytest.param(lambda marker: {**marker, "since": marker["since"][:19]}, id="since-without-time-zone"),
    pytest.param(lambda marker: {**marker, "fingerprint": 42}, id="fingerprint-not-text"),
    pytest.param(lambda marker: {**marker, "answer": {**marker["answer"], "blob": "elsewhere.png"}}, id="no-gallery-blob"),
    pytest.param(lambda marker: {**marker, "answer": {**marker["answer"], "prompt": 42}}, id="prompt-not-text"),
    pytest.param(lambda marker: {**marker, "answer": ["not", "a", "record"]}, id="answer-not-a-record"),
])
async def test_a_marker_edited_by_hand_is_replaced_not_a_500(
    api: Api, keyed_env: OpenAIServer, azurite: Azurite, edit: Callable[[dict], dict]
):
    key = {"Idempotency-Key": "order-43"}
    first = await api.generate({"prompt": PROMPT}, headers=key)
    async with system_container(azurite, os.environ["VISIONARY_SYSTEM_CONTAINER"]) as records:
        [marker] = await blob_names(records, "idempotency/")
        recorded = json.loads(await (await records.download_blob(marker)).readall())
        await records.upload_blob(marker, json.dumps(edit(recorded)), overwrite=True)
    second = await api.generate({"prompt": PROMPT}, headers=key)
    assert (first.status, second.status) == (201, 201)
    assert second.json()["blob"] != first.json()["blob"]  # the first answer was lost with its record
    third = await api.generate({"prompt": PROMPT}, headers=key)
    assert third.json()["blob"] == second.json()["blob"]  # the replaced marker works as before


async def test_a_key_of_200_printable_characters_spaces_included_is_honoured(api: Api, keyed_env: OpenAIServer):
    key = {"Idempotency-Key": "koi ~" * 40}  # the longest the README allows; a space is printable ASCII
    first = await api.generate({"prompt": PROMPT}, headers=key)
    again = await api.generate({"prompt": PROMPT}, headers=key)
    assert (first.status, again.status) == (201, 201)
    assert again.json()["blob"] == first.json()["blob"]
    assert len(keyed_env.model_calls()) == 1


@pytest.mark.parametrize("key", ["", "k" * 201, "line\nbreak", "caf\u00e9"])
async def test_a_malformed_key_is_a_400(api: Api, keyed_env: OpenAIServer, key: str):
    answer = await api.generate({"prompt": PROMPT}, headers={"Idempotency-Key": key})
    assert answer.status == 400 and answer.json()["code"] == "invalid_parameter"
    assert keyed_env.model_calls() == []


@asynccontextmanager
async def ledger_on(container_name: str, **options: Any) -> AsyncIterator[IdempotencyLedger]:
    """A ledger on storage as the settings reach it (here, through the lossy proxy). Its
    background retries and clean-ups stop when the test is done with it: tests share one loop."""
    async with open_service_client(Settings.from_env().require_storage()) as service:
        ledger = IdempotencyLedger(service.get_container_client(container_name), **options)
        try:
            yield ledger
        finally:
            ledger.late_writes.cancel()


async def test_a_claim_whose_answer_was_lost_is_still_ours(lossy_storage: LossyStorage, container_name: str):
    calls = []

    async def work() -> dict:
        calls.append(1)
        return {"drawn": len(calls)}

    async with ledger_on(container_name, wait_seconds=1, timeout=10) as ledger:
        lossy_storage.lose_answer("PUT", "/idempotency/", conditional=False)  # the create-only claim
        assert await ledger.once("order-44", "prompt", work) == {"drawn": 1}  # not 409 in_progress
        assert await ledger.once("order-44", "prompt", work) == {"drawn": 1}
    assert len(lossy_storage.lost) == 1 and len(calls) == 1


async def test_a_claim_storage_made_after_its_request_gave_up_is_removed(
    lossy_storage: LossyStorage, container_name: str
):
    # The claim lands, but its answer comes after the request's storage timeout: the request
    # answers 503, and its marker, with no owner, must not hold the key "in progress" until stale.
    calls = []

    async def work() -> dict:
        calls.append(1)
        return {"drawn": len(calls)}

    async with ledger_on(container_name, wait_seconds=5, poll_seconds=0.1, timeout=0.5) as ledger:
        lossy_storage.delay_answer("PUT", "/idempotency/", 1.0, conditional=False)
        with pytest.raises(TimeoutError):
            await ledger.once("order-45", "prompt", work)
        assert calls == []
        assert await ledger.once("order-45", "prompt", work) == {"drawn": 1}  # not 409 in_progress


async def test_the_clean_up_of_a_claim_that_never_reached_storage_leaves_the_next_owners_claim(
    lossy_storage: LossyStorage, container_name: str
):
    # The first request's claim never reaches storage and it gives up (503); its clean-up looks
    # for that claim for minutes. Meanwhile the retry claims the key: that claim is not the lost
    # one, and removed mid-work it would lose the retry's answer, and a repeat draw again.
    calls = []

    async def work() -> dict:
        calls.append(1)
        await asyncio.sleep(1.5)  # still drawing when the clean-up first looks
        return {"drawn": len(calls)}

    async with ledger_on(container_name, timeout=0.5) as ledger:
        lossy_storage.drop("PUT", "/idempotency/", 1.0)
        with pytest.raises(TimeoutError):
            await ledger.once("order-47", "prompt", work)
        assert await ledger.once("order-47", "prompt", work) == {"drawn": 1}
        assert await ledger.once("order-47", "prompt", work) == {"drawn": 1}
    assert calls == [1]


async def test_a_failed_requests_key_is_freed_once_storage_answers_again(
    lossy_storage: LossyStorage, container_name: str
):
    # The model fails, and the release of the claim never reaches storage (away for a moment):
    # left as it is, the claim answered the client's retry 409 in_progress for minutes, until stale.
    calls = []

    async def fails() -> dict:
        lossy_storage.drop("DELETE", "/idempotency/", 1.0)
        raise ApiError.upstream_error()

    async def work() -> dict:
        calls.append(1)
        return {"drawn": len(calls)}

    async with ledger_on(container_name, wait_seconds=8, poll_seconds=0.1, timeout=0.5) as ledger:
        with pytest.raises(ApiError) as failed:
            await ledger.once("order-48", "prompt", fails)
        assert failed.value.code == "upstream_error"  # the request's own error, not storage's
        started = time.monotonic()
        assert await ledger.once("order-48", "prompt", work) == {"drawn": 1}  # not 409 in_progress
        assert time.monotonic() - started < 4  # freed at the clean-up's first look, a second on
    assert calls == [1]


async def test_work_whose_done_record_storage_answers_too_late_still_answers(
    lossy_storage: LossyStorage, container_name: str, caplog
):
    # The picture is drawn and stored; only the marker's "done" write answers past the timeout.
    # The request answers with its picture (a 503 would make the client draw it again), and
    # storage made the write, so a repeat gets the same answer.
    calls = []

    async def work() -> dict:
        calls.append(1)
        return {"drawn": len(calls)}

    async with ledger_on(container_name, timeout=0.5) as ledger:
        lossy_storage.delay_answer("PUT", "/idempotency/", 1.0, conditional=True)  # the "done" write
        assert await ledger.once("order-46", "prompt", work) == {"drawn": 1}
        assert "idempotency marker not recorded as done" in caplog.text
        await lossy_storage.settled()  # the late answer goes by
        assert await ledger.once("order-46", "prompt", work) == {"drawn": 1}
    assert calls == [1]


async def recorded_done(azurite: Azurite, container_name: str) -> bool:
    """Whether the one idempotency marker holds its answer (seen behind the ledger's back)."""
    async with system_container(azurite, container_name) as records:
        [marker] = await blob_names(records, "idempotency/")
        return json.loads(await (await records.download_blob(marker)).readall())["state"] == "done"


async def test_an_answer_storage_could_not_record_is_recorded_once_it_answers_again(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # The picture is stored, but the marker's "done" write never reaches storage (away for a
    # moment). Left a claim, it went stale and the client's next retry drew a second picture.
    calls = []

    async def work() -> dict:
        calls.append(1)
        lossy_storage.drop("PUT", "/idempotency/", 1.0)  # the "done" write
        return {"drawn": len(calls)}

    async with ledger_on(container_name, stale_after=timedelta(seconds=3), timeout=0.5) as ledger:
        assert await ledger.once("order-49", "prompt", work) == {"drawn": 1}
        await asyncio.sleep(3.5)  # the claim would be stale by now ...
        assert await eventually(lambda: recorded_done(azurite, container_name))  # ... but its answer is kept
        assert await ledger.once("order-49", "prompt", work) == {"drawn": 1}
    assert calls == [1]


async def overtaken(container: ContainerClient, ending: Callable[[], Awaitable[dict]]) -> dict:
    """Start work under a key, let a repeat take the claim over (every claim is stale at once),
    then end the first work with `ending`; what the key answers afterwards."""
    ledger = IdempotencyLedger(container, stale_after=timedelta(0))
    release = asyncio.Event()

    async def first() -> dict:
        await release.wait()
        return await ending()

    async def second() -> dict:
        return {"owner": "second"}

    owner = asyncio.create_task(ledger.once("taken-over", "same request", first))
    while not await blob_names(container, "idempotency/"):
        await asyncio.sleep(0.01)
    assert await ledger.once("taken-over", "same request", second) == {"owner": "second"}
    release.set()
    await asyncio.gather(owner, return_exceptions=True)

    async def third() -> dict:
        return {"owner": "third"}  # runs only if the second's record is gone

    return await ledger.once("taken-over", "same request", third)


async def test_work_that_outlived_its_claim_leaves_the_new_owners_record(container: ContainerClient):
    async def done() -> dict:
        return {"owner": "first"}

    assert await overtaken(container, done) == {"owner": "second"}


async def test_a_failure_after_its_claim_was_taken_over_removes_nothing(container: ContainerClient):
    async def fails() -> dict:
        raise ApiError.upstream_error()

    assert await overtaken(container, fails) == {"owner": "second"}


@pytest.mark.parametrize("storage_timeout", ["10", "100"])
async def test_a_claim_is_stale_only_after_the_longest_a_live_owner_can_hold_it(azurite: Azurite, storage_timeout):
    # Short model attempts, but the deadline (default 220 s) still bounds a draw and its download;
    # each of the claim's four storage calls may take its whole timeout, however long that is.
    settings = Settings.from_env({"AzureWebJobsStorage": azurite.connection_string, "OPENAI_API_KEY": "sk",
                                  "VISIONARY_MODEL_TIMEOUT_SECONDS": "5", "VISIONARY_MODEL_MAX_RETRIES": "0",
                                  "VISIONARY_STORAGE_TIMEOUT_SECONDS": storage_timeout})
    app = Clients(settings)
    try:
        stale_after = app.guards.ledger.stale_after.total_seconds()
    finally:
        await app.close()
    assert stale_after > settings.models.deadline_seconds + 4 * settings.storage.timeout_seconds
