"""Storage faults: an Azurite of this test's own is frozen, killed and brought back.

Model faults are in test_models.py (429 and its Retry-After, 5xx, timeouts, answers that break
the protocol) and test_generate_image.py (how generateImage answers each: truncated base64,
HTML at an image link, the deadlines).
"""

import asyncio
import json
import os
import signal
import time

import pytest
from azure.storage.blob.aio import BlobServiceClient

from tests.azurite import Azurite, free_port
from tests.conftest import Api, eventually, png_bytes
from visionary import naming
from visionary.guards import DailyCap
from visionary.settings import Settings
from visionary.storage import Gallery, open_service_client

TIMEOUT = 2.0
NOW = 1_763_700_000_000


@pytest.fixture
def own_azurite(monkeypatch, container_name):
    server = Azurite(free_port()).start()
    monkeypatch.setenv("VISIONARY_STORAGE_CONNECTION_STRING", server.connection_string)
    monkeypatch.setenv("VISIONARY_CONTAINER", container_name)
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", str(TIMEOUT))
    monkeypatch.setenv("VISIONARY_PROVIDER", "offline")
    yield server
    if server.process and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


async def _absent(blob) -> bool:
    return not await blob.exists()


async def timed(call):
    started = time.monotonic()
    answer = await call
    return answer, time.monotonic() - started


async def test_a_frozen_storage_is_a_503_within_the_timeout_and_then_recovers(api: Api, own_azurite: Azurite):
    assert (await api.generate({"prompt": "before the outage"})).status == 201
    os.kill(own_azurite.process.pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        listing, listing_time = await timed(api.get_images())
        generation, generation_time = await timed(api.generate({"prompt": "during the outage"}))
        # The process keeps serving what needs no storage round trip.
        assert (await api.call("sasToken")).status == 200
        assert (await api.suggest()).status == 200
    finally:
        os.kill(own_azurite.process.pid, signal.SIGCONT)
    for answer, elapsed in ((listing, listing_time), (generation, generation_time)):
        assert answer.status == 503 and answer.json()["code"] == "storage_unavailable"
        assert elapsed < TIMEOUT + 1.0, elapsed
    # Azurite applies the upload it held once it thaws; the app removes that blob of a
    # failed request as soon as storage answers again.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        prompts = [image["prompt"] for image in (await api.get_images()).json()["imageUrls"]]
        if prompts == ["before the outage"]:
            break
        await asyncio.sleep(0.5)
    assert prompts == ["before the outage"]


async def test_a_stopped_storage_is_a_503_and_a_restarted_one_serves_again(api: Api, own_azurite: Azurite):
    own_azurite.stop()
    answer, elapsed = await timed(api.get_images())
    assert answer.status == 503 and answer.json()["code"] == "storage_unavailable"
    assert elapsed < TIMEOUT + 1.0
    own_azurite.start()  # the same port, an empty in-memory store
    assert (await api.generate({"prompt": "after the restart"})).status == 201
    assert [i["prompt"] for i in (await api.get_images()).json()["imageUrls"]] == ["after the restart"]


async def test_a_storage_outage_during_cleanup_keeps_the_requests_own_error(
    api: Api, own_azurite: Azurite, model_server, monkeypatch
):
    # The cap's slot is taken, the model fails while storage is frozen: giving the slot back
    # fails too, and the client still hears what really went wrong (the model), not storage.
    monkeypatch.setenv("VISIONARY_PROVIDER", "openai")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{model_server.url}/v1")
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "0")
    monkeypatch.setenv("VISIONARY_MAX_IMAGES_PER_DAY", "5")
    model_server.behaviour.error = "content_policy"
    model_server.behaviour.delay = 1.0
    request = asyncio.create_task(api.generate({"prompt": "refused while storage is away"}))
    while not model_server.model_calls():  # the slot is taken once the model is asked
        await asyncio.sleep(0.02)
    os.kill(own_azurite.process.pid, signal.SIGSTOP)  # while the model is thinking
    try:
        answer = await request
    finally:
        os.kill(own_azurite.process.pid, signal.SIGCONT)
    assert answer.status == 400 and answer.json()["code"] == "content_policy_violation"


async def test_after_a_failed_upload_storage_must_answer_before_the_model_is_paid_again(
    api: Api, own_azurite: Azurite, model_server, monkeypatch, container_name: str
):
    # Storage away (or refusing a rotated key) while links are signed with a key: nothing
    # touches storage before the model, so every request paid for a picture it could not keep.
    monkeypatch.setenv("VISIONARY_PROVIDER", "openai")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{model_server.url}/v1")
    assert (await api.generate({"prompt": "before the outage"})).status == 201
    os.kill(own_azurite.process.pid, signal.SIGSTOP)
    try:
        lost = await api.generate({"prompt": "drawn, then lost"})
        refused = await api.generate({"prompt": "not drawn"})
    finally:
        os.kill(own_azurite.process.pid, signal.SIGCONT)
    assert [answer.status for answer in (lost, refused)] == [503, 503]
    assert len(model_server.model_calls()) == 2  # the first picture, and the one lost
    async with BlobServiceClient.from_connection_string(own_azurite.connection_string) as service:
        await service.delete_container(container_name)  # storage answers, if only "no container"
    assert (await api.generate({"prompt": "after the outage"})).status == 201
    assert len(model_server.model_calls()) == 3


async def test_a_burst_at_a_frozen_count_fails_within_the_timeout_and_the_next_one_counts(
    own_azurite: Azurite, container_name: str
):
    # The requests of one process share a write of the count: frozen storage fails them all,
    # each within its own timeout, and the count goes on once storage is back.
    async with open_service_client(Settings.from_env().require_storage()) as service:
        cap = DailyCap(service.get_container_client(f"system-{container_name}"), 100, timeout=TIMEOUT)

        async def generation() -> None:
            async with cap.slot():
                pass

        await generation()  # today's count exists: 1
        os.kill(own_azurite.process.pid, signal.SIGSTOP)
        try:
            burst = asyncio.gather(*[generation() for _ in range(20)], return_exceptions=True)
            failures, elapsed = await timed(burst)
        finally:
            os.kill(own_azurite.process.pid, signal.SIGCONT)
        assert all(isinstance(failure, TimeoutError) for failure in failures), failures
        assert elapsed < TIMEOUT + 1.0
        await asyncio.gather(*[generation() for _ in range(5)])
        [day] = [blob.name async for blob in cap.container.list_blobs("cost-guard/")]
        count = json.loads(await (await cap.container.download_blob(day)).readall())["count"]
    assert count == 6  # none for the frozen burst: a write of it that landed as storage thawed is given back


async def test_cleanup_of_a_timed_out_upload_leaves_another_requests_picture_alone(own_azurite: Azurite):
    # Two uploads are held by frozen storage and given up on. Once it thaws, the one whose
    # name was free lands and is removed again; the one whose name another request's
    # picture already holds is refused by storage, and that picture must stay.
    gallery = Gallery.from_settings(Settings.from_env().require_storage())
    try:
        gallery.clock = lambda: NOW
        theirs = await gallery.upload(png_bytes(1), "image/png", "a taken name")
        os.kill(own_azurite.process.pid, signal.SIGSTOP)
        try:
            failures = await asyncio.gather(
                gallery.upload(png_bytes(2), "image/png", "a taken name"),
                gallery.upload(png_bytes(3), "image/png", "a free name"),
                return_exceptions=True,
            )
        finally:
            os.kill(own_azurite.process.pid, signal.SIGCONT)
        assert all(isinstance(failure, TimeoutError) for failure in failures), failures
        free = gallery.container.get_blob_client(naming.name_for("a free name", NOW, "image/png").blob)
        assert await eventually(free.exists)  # the held upload lands once storage thaws ...
        assert await eventually(lambda: _absent(free))  # ... and the clean-up removes it
        await asyncio.sleep(1.0)  # both clean-ups looked at their names at the same moment
        taken = gallery.container.get_blob_client(theirs.name.blob)
        assert await (await taken.download_blob()).readall() == png_bytes(1)
    finally:
        await gallery.close()
