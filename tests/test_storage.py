import asyncio
from datetime import datetime, timezone
from urllib.parse import quote, unquote

import pytest
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from tests.azurite import Azurite
from tests.conftest import blob_names, eventually, png_bytes
from tests.lossy_storage import LossyStorage
from visionary import naming
from visionary.errors import ApiError
from visionary.settings import Settings
from visionary.storage import MAX_CLASH_RETRIES, Gallery, encode_metadata

NOW = 1_763_700_000_000


async def test_the_container_is_created_private_on_first_upload(gallery: Gallery, container: ContainerClient):
    assert not await container.exists()
    await gallery.upload(png_bytes(), "image/png", "first")
    properties = await container.get_container_properties()
    assert properties.public_access is None


async def test_uploads_in_the_same_millisecond_get_distinct_names(gallery: Gallery, container: ContainerClient):
    gallery.clock = lambda: NOW  # every upload sees the same millisecond
    first = await gallery.upload(png_bytes(1), "image/png", "same prompt")
    second = await gallery.upload(png_bytes(2), "image/png", "same prompt")
    assert first.name.ts == NOW and second.name.ts == NOW + 1
    assert second.name.blob < first.name.blob  # the later one lists first
    assert await (await container.download_blob(first.name.blob)).readall() == png_bytes(1)
    assert await (await container.download_blob(second.name.blob)).readall() == png_bytes(2)


async def test_a_millisecond_taken_at_every_name_tried_is_a_503_that_stores_nothing(
    gallery: Gallery, container: ContainerClient
):
    gallery.clock = lambda: NOW
    first = naming.name_for("same prompt", NOW)
    taken = [first.later(ms).blob for ms in range(MAX_CLASH_RETRIES)]  # another picture at each
    await container.create_container()
    await asyncio.gather(*(container.upload_blob(name, png_bytes(1)) for name in taken))
    with pytest.raises(ApiError) as caught:
        await gallery.upload(png_bytes(2), "image/png", "same prompt")
    assert caught.value.code == "storage_unavailable"
    assert sorted(await blob_names(container)) == sorted(taken)  # nothing overwritten, nothing added


async def test_blobs_carry_metadata_and_headers(gallery: Gallery, container: ContainerClient):
    prompt = "Ein Fuchs 🦊 im Schnee / watercolor, 100% \"quiet\"\nsecond line"
    stored = await gallery.upload(png_bytes(), "image/png", prompt, revised_prompt="A fox", model="gpt-image-2")
    properties = await container.get_blob_client(stored.name.blob).get_blob_properties()
    assert properties.content_settings.content_type == "image/png"
    assert properties.content_settings.cache_control == "public, max-age=31536000, immutable"
    metadata = properties.metadata
    assert unquote(metadata["prompt"]) == prompt
    assert unquote(metadata["revised_prompt"]) == "A fox"
    assert metadata["model"] == "gpt-image-2"
    assert datetime.fromisoformat(metadata["created"]) == stored.name.created_at
    assert all(value.isascii() for value in metadata.values())


async def test_a_page_is_newest_first_and_the_cursor_walks_on(gallery: Gallery):
    for i in range(5):
        gallery.clock = lambda i=i: NOW + i * 1000
        await gallery.upload(png_bytes(i), "image/png", f"picture {i}")
    first = await gallery.page(3, None)
    assert [image.prompt for image in first.images] == ["picture 4", "picture 3", "picture 2"]
    second = await gallery.page(3, first.next_cursor)
    assert [image.prompt for image in second.images] == ["picture 1", "picture 0"]
    assert second.next_cursor is None


async def test_no_container_is_an_empty_page(gallery: Gallery):
    page = await gallery.page(10, None)
    assert page.images == [] and page.next_cursor is None


def test_metadata_stays_within_azures_8_kib():
    created = datetime(2026, 1, 1, tzinfo=timezone.utc)
    huge = "東京" * 2000
    metadata = encode_metadata(huge, "revised " * 1000, "gpt-image-2", created)
    assert sum(len(k) + len(v) for k, v in metadata.items()) <= 8192
    assert metadata["prompt_truncated"] == "true"
    assert huge.startswith(unquote(metadata["prompt"]))
    short = encode_metadata("a cat", "A fluffy cat", None, created)
    assert unquote(short["revised_prompt"]) == "A fluffy cat" and "prompt_truncated" not in short
    named_at_length = encode_metadata("a cat", None, "模型" * 4000, created)  # a model name is any setting
    assert sum(len(k) + len(v) for k, v in named_at_length.items()) <= 8192
    assert named_at_length["model"].isascii() and unquote(named_at_length["prompt"]) == "a cat"


async def test_a_prompt_too_long_for_metadata_is_listed_cut_and_says_so(gallery: Gallery):
    prompt = "猫" * 1000  # 9 bytes a character percent-encoded: over Azure's 8 KiB
    stored = await gallery.upload(png_bytes(), "image/png", prompt)
    assert stored.prompt == prompt  # generateImage's own answer holds it whole
    [listed] = (await gallery.page(1, None)).images
    assert listed.prompt.endswith("…") and prompt.startswith(listed.prompt[:-1])
    assert 800 < len(listed.prompt) < len(prompt)


def last_upload(storage: LossyStorage) -> str:
    """Azurite's answer to the last upload it made: "PUT path status"."""
    return [made for made in storage.made if made.startswith("PUT ")][-1]


async def none_in(container: ContainerClient) -> bool:
    return await blob_names(container) == []


async def test_an_upload_whose_answer_was_lost_is_stored_once(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    gallery = Gallery.from_settings(Settings.from_env().require_storage())
    try:
        await gallery.ensure_container()
        lossy_storage.lose_answer("PUT", "/gallery/")  # stored, but the app hears a 500 and tries again
        stored = await gallery.upload(png_bytes(), "image/png", "an answer lost on the way")
    finally:
        await gallery.close()
    assert len(lossy_storage.lost) == 1
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        assert await blob_names(service.get_container_client(container_name)) == [stored.name.blob]


async def test_an_upload_that_reaches_storage_after_its_request_gave_up_is_removed(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str, monkeypatch
):
    # Held on the way past the request's timeout (a 503) and past the clean-up's first look,
    # which finds nothing yet: the picture of a failed request must still not stay.
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "0.5")
    gallery = Gallery.from_settings(Settings.from_env().require_storage())
    try:
        await gallery.ensure_container()
        lossy_storage.hold("PUT", "/gallery/", 2.5)  # the clean-up looks 1 s after the failure, then 2 s later
        with pytest.raises(TimeoutError):
            await gallery.upload(png_bytes(), "image/png", "held on the way")
        await lossy_storage.settled()  # it reached storage 2 s after the failure, between those looks ...
        assert last_upload(lossy_storage).endswith(" 201")  # ... and was stored after its request failed
        async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
            container = service.get_container_client(container_name)
            assert await eventually(lambda: none_in(container))  # the clean-up's next look removes it
    finally:
        await gallery.close()


async def test_a_late_upload_at_the_name_after_a_clash_is_the_one_removed(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str, monkeypatch
):
    # Another picture holds the millisecond, so the upload moves on 1 ms, and that write is held
    # past the request's timeout: the clean-up looks for the name it last tried, not the first.
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "0.5")
    gallery = Gallery.from_settings(Settings.from_env().require_storage())
    gallery.clock = lambda: NOW
    first = naming.name_for("same prompt", NOW)
    try:
        await gallery.ensure_container()
        await gallery.upload(png_bytes(1), "image/png", "same prompt")  # the other picture, at `first`
        lossy_storage.hold("PUT", f"/gallery/{first.later(1).blob.split('/')[1][:13]}_", 2.5)
        with pytest.raises(TimeoutError):
            await gallery.upload(png_bytes(2), "image/png", "same prompt")
        await lossy_storage.settled()  # it reached storage 2 s after the failure, before the look at 3 s ...
        upload = last_upload(lossy_storage)
        assert quote(first.later(1).blob) in upload and upload.endswith(" 201")  # ... and was stored there
        async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
            container = service.get_container_client(container_name)

            async def only_the_other_picture_left() -> bool:
                return await blob_names(container) == [first.blob]

            assert await eventually(only_the_other_picture_left)
    finally:
        await gallery.close()


async def test_after_a_failed_upload_storage_is_asked_once_and_not_again_once_uploads_succeed(
    lossy_storage: LossyStorage, monkeypatch
):
    # check_after_failure runs before each model call: after a failure it asks storage; while
    # uploads succeed it costs nothing (the README: "this asks storage nothing").
    def container_reads() -> int:
        return sum(seen.startswith("GET ") and "restype=container" in seen for seen in lossy_storage.seen)

    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "0.5")
    gallery = Gallery.from_settings(Settings.from_env().require_storage())
    try:
        await gallery.ensure_container()
        lossy_storage.drop("PUT", "/gallery/", 1.0)
        with pytest.raises(TimeoutError):
            await gallery.upload(png_bytes(1), "image/png", "lost")
        await gallery.check_after_failure()
        assert container_reads() == 1  # storage answers: the model may be paid
        lossy_storage.drop("PUT", "/gallery/", 1.0)
        with pytest.raises(TimeoutError):
            await gallery.upload(png_bytes(2), "image/png", "lost again")
        await gallery.upload(png_bytes(3), "image/png", "stored")  # another request's, meanwhile
        await gallery.check_after_failure()
        await gallery.check_after_failure()
        assert container_reads() == 1  # uploads succeed again: nothing to ask
    finally:
        await gallery.close()


async def test_a_model_name_in_any_script_is_listed_as_it_was_stored(gallery: Gallery):
    await gallery.upload(png_bytes(), "image/png", "a cat", None, "modèle-1")
    [listed] = (await gallery.page(1, None)).images
    assert listed.model == "modèle-1"


async def test_an_account_url_written_in_capitals_signs_with_the_accounts_name():
    # Host names ignore case; the account's name, which signs every read link, is lower case.
    settings = Settings.from_env({"VISIONARY_STORAGE_ACCOUNT_URL": "HTTPS://MyGallery.Blob.Core.Windows.Net/"})
    assert settings.storage.account_url == "https://mygallery.blob.core.windows.net"
    gallery = Gallery.from_settings(settings.require_storage())
    try:
        assert gallery.container.account_name == "mygallery"
    finally:
        await gallery.close()
