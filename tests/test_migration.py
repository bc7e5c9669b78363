"""`python -m visionary migrate`: the Node version's blobs moved into the naming scheme, on a real Azurite."""

import asyncio
import base64
import io
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

import pytest
from azure.core.exceptions import HttpResponseError, ResourceModifiedError
from azure.storage.blob import generate_container_sas
from azure.storage.blob.aio import BlobServiceClient, ContainerClient
from PIL import Image

from tests.azurite import ACCOUNT, KEY, ROOT, Azurite, free_port
from tests.conftest import ROOT_ENV, blob_names, png_bytes
from tests.lossy_storage import LossyStorage
from tests.served import NO_LOCAL_SETTINGS
from visionary import naming
from visionary.images import MAX_IMAGE_BYTES
from visionary.settings import Settings
from visionary.migration import Action, Outcome, Report, _delete_source, describe, migrate
from visionary.storage import MAX_CLASH_RETRIES, Gallery, encode_metadata, open_service_client

# What the Node version left: {raw prompt}_{epoch ms}.png (a "/" in the prompt made a folder)
LIGHTHOUSE, FOX = "A lighthouse at dusk, oil painting", "Ein Fuchs 🦊 im Schnee, 東京"
NODE_BLOBS = {
    f"{LIGHTHOUSE}_1700000000000.png": (LIGHTHOUSE, png_bytes(1)),
    "a_b_c_1700000001000.png": ("a_b_c", png_bytes(2)),
    f"{FOX}_1700000002000.png": (FOX, png_bytes(3)),
}
# What must stay where it is, and why.
NOT_AN_IMAGE = "not a whole PNG, JPEG or WebP image"
NOT_A_NODE_NAME = "not a Node name ({prompt}_{milliseconds}.png)"
OTHER_BLOBS = {
    "half a picture_1700000003000.png": (b"\x89PNG\r\n\x1a\n cut short", NOT_AN_IMAGE),
    "notes.txt": (b"remember the milk", NOT_A_NODE_NAME),
    "photo.png": (png_bytes(4), NOT_A_NODE_NAME),
    "dir/notes.txt": (b"remember the eggs", NOT_A_NODE_NAME),
}
MIGRATED_PROMPT, MIGRATED_TS = "drawn by the Python version", 1_700_000_009_000


def scheme_name(source: str) -> naming.BlobName:
    """A seeded Node blob's scheme name, made as the migration makes it (the seeded pictures are PNGs)."""
    node = naming.parse_node_name(source)
    return naming.name_for(node.prompt, node.ts, "image/png")


def target_of(source: str) -> str:
    return scheme_name(source).blob


def conflict_line(source: str) -> str:
    return (f"conflict: {source} -> {target_of(source)}: other pictures are there and at the next "
            f"{MAX_CLASH_RETRIES - 1} milliseconds; source left")


async def take_every_name_from(container: ContainerClient, first: naming.BlobName) -> None:
    """Another picture at the target name and at each later millisecond the migration tries."""
    names = [first.later(ms).blob for ms in range(MAX_CLASH_RETRIES)]
    await asyncio.gather(*(container.upload_blob(name, png_bytes(77)) for name in names))


async def seed(container: ContainerClient, gallery: Gallery) -> str:
    """The Node blobs, the blobs to leave, and one picture already in the scheme (its blob name)."""
    await container.create_container()
    for name, (_, data) in NODE_BLOBS.items():
        await container.upload_blob(name, data, content_type="image/png")
    for name, (data, _) in OTHER_BLOBS.items():
        await container.upload_blob(name, data)
    stored = await gallery.upload(png_bytes(9), "image/png", MIGRATED_PROMPT, ts=MIGRATED_TS)
    return stored.name.blob


async def snapshot(container: ContainerClient) -> dict[str, str]:
    """Every blob's name and etag: equal snapshots mean nothing was written or deleted."""
    return {blob.name: blob.etag async for blob in container.list_blobs()}


async def read(container: ContainerClient, blob: str) -> bytes:
    return await (await container.download_blob(blob)).readall()


def printed(report: Report) -> list[str]:
    """What the command prints: each outcome's line as it comes, then the summary."""
    return [outcome.line(report.dry_run) for outcome in report.outcomes] + [report.summary()]


def outcomes(report: Report) -> dict[str, tuple[Action, str | None]]:
    return {o.source: (o.action, o.target or o.reason) for o in report.outcomes}


def expected_left() -> dict[str, tuple[Action, str]]:
    return {name: (Action.LEFT, reason) for name, (_, reason) in OTHER_BLOBS.items()}


async def test_a_dry_run_lists_the_plan_and_changes_nothing(container: ContainerClient, gallery: Gallery):
    await seed(container, gallery)
    before = await snapshot(container)

    report = await migrate(container, dry_run=True)

    assert await snapshot(container) == before
    assert outcomes(report) == {
        **{name: (Action.MOVED, target_of(name)) for name in NODE_BLOBS},
        **expected_left(),
    }
    assert report.ok
    assert printed(report) == [
        f"left: dir/notes.txt: {NOT_A_NODE_NAME}",
        f"would move: {LIGHTHOUSE}_1700000000000.png -> gallery/8299999999999_{LIGHTHOUSE}_1700000000000.png",
        f"would move: {FOX}_1700000002000.png -> gallery/8299999997999_{FOX}_1700000002000.png",
        "would move: a_b_c_1700000001000.png -> gallery/8299999998999_a b c_1700000001000.png",
        f"left: half a picture_1700000003000.png: {NOT_AN_IMAGE}",
        f"left: notes.txt: {NOT_A_NODE_NAME}",
        f"left: photo.png: {NOT_A_NODE_NAME}",
        "dry run, nothing changed; a run would have: moved 3, resumed 0, left 4, conflicts 0",
    ]


async def test_a_run_moves_the_node_blobs_with_their_time_and_prompt(
    container: ContainerClient, gallery: Gallery, api
):
    already_migrated = await seed(container, gallery)

    report = await migrate(container)

    assert outcomes(report) == {
        **{name: (Action.MOVED, target_of(name)) for name in NODE_BLOBS},
        **expected_left(),
    }
    assert report.ok and report.summary() == "moved 3, resumed 0, left 4, conflicts 0"
    assert set(await snapshot(container)) == {
        *OTHER_BLOBS, already_migrated, *(target_of(name) for name in NODE_BLOBS)
    }
    for source, (prompt, data) in NODE_BLOBS.items():
        blob = container.get_blob_client(target_of(source))
        properties = await blob.get_blob_properties()
        assert await read(container, blob.blob_name) == data
        assert properties.content_settings.content_type == "image/png"
        assert properties.content_settings.cache_control == "public, max-age=31536000, immutable"
        assert unquote(properties.metadata["prompt"]) == prompt
        created_at = scheme_name(source).created_at
        assert datetime.fromisoformat(properties.metadata["created"]) == created_at
        assert "model" not in properties.metadata

    gallery_page = (await api.get_images()).json()["imageUrls"]
    assert [(image["prompt"], image["name"], image["createdAt"]) for image in gallery_page] == [
        (MIGRATED_PROMPT, f"{MIGRATED_PROMPT}_1700000009000.png", "2023-11-14T22:13:29.000Z"),
        (FOX, f"{FOX}_1700000002000.png", "2023-11-14T22:13:22.000Z"),
        ("a_b_c", "a b c_1700000001000.png", "2023-11-14T22:13:21.000Z"),
        (LIGHTHOUSE, f"{LIGHTHOUSE}_1700000000000.png", "2023-11-14T22:13:20.000Z"),
    ]


async def test_a_second_run_does_nothing(container: ContainerClient, gallery: Gallery):
    await seed(container, gallery)
    await migrate(container)
    after_first = await snapshot(container)

    again = await migrate(container)

    assert await snapshot(container) == after_first
    assert outcomes(again) == expected_left()
    assert again.ok and again.summary() == "moved 0, resumed 0, left 4, conflicts 0"


async def test_a_run_interrupted_after_a_copy_is_resumed(container: ContainerClient, gallery: Gallery):
    await seed(container, gallery)
    # An earlier run copied this one and stopped before deleting the source.
    copied = "a_b_c_1700000001000.png"
    prompt, data = NODE_BLOBS[copied]
    metadata = encode_metadata(prompt, None, None, scheme_name(copied).created_at)
    await container.upload_blob(target_of(copied), data, metadata=metadata)

    report = await migrate(container)

    assert outcomes(report)[copied] == (Action.RESUMED, target_of(copied))
    assert f"already there: {copied} -> {target_of(copied)} (source deleted)" in printed(report)
    assert report.ok and report.summary() == "moved 2, resumed 1, left 4, conflicts 0"
    names = set(await snapshot(container))
    assert copied not in names and target_of(copied) in names
    assert await read(container, target_of(copied)) == NODE_BLOBS[copied][1]


async def test_a_prompt_with_a_slash_is_moved_from_the_folder_it_made(container: ContainerClient):
    # The Node version named the blob after the raw prompt, so a "/" made a folder, and
    # its gallery (a flat listing) showed the picture all the same.
    await container.create_container()
    slashed, prompt = "cats/dogs in a field_1690000000001.png", "cats/dogs in a field"
    # A prompt that began with "gallery/" is under the scheme's folder, which is never listed.
    in_gallery = "gallery/a Node prompt_1690000000002.png"
    for name, data in ((slashed, png_bytes(1)), ("cats/notes.txt", b"remember the milk"),
                       (in_gallery, png_bytes(2))):
        await container.upload_blob(name, data)

    dry = await migrate(container, dry_run=True)
    report = await migrate(container)

    target = "gallery/8309999999998_cats dogs in a field_1690000000001.png"
    for run in (dry, report):
        assert outcomes(run) == {
            slashed: (Action.MOVED, target), "cats/notes.txt": (Action.LEFT, NOT_A_NODE_NAME)
        }
    assert report.ok
    assert set(await snapshot(container)) == {target, "cats/notes.txt", in_gallery}
    assert await read(container, target) == png_bytes(1)
    properties = await container.get_blob_client(target).get_blob_properties()
    assert unquote(properties.metadata["prompt"]) == prompt


async def test_a_source_rewritten_after_its_copy_is_kept(container: ContainerClient):
    # The step after a verified copy: delete the source only as it was read (its ETag).
    await container.create_container()
    source = "cat_1700000000000.png"
    as_read = await (await container.upload_blob(source, png_bytes(1))).get_blob_properties()
    await container.upload_blob(source, png_bytes(2), overwrite=True)  # rewritten meanwhile
    with pytest.raises(ResourceModifiedError) as changed:
        await _delete_source(container, source, as_read.etag)
    assert describe(changed.value) == "it changed while it was being moved; run again"
    assert await (await container.download_blob(source)).readall() == png_bytes(2)


async def test_a_source_another_run_deleted_is_no_error(container: ContainerClient):
    await container.create_container()
    source = "moved by the other run_1700000000000.png"
    as_read = await (await container.upload_blob(source, png_bytes(1))).get_blob_properties()
    await container.delete_blob(source)  # Azurite answers the conditional delete that follows with 412
    await _delete_source(container, source, as_read.etag)


async def test_two_runs_at_once_move_every_picture_once_without_errors(container: ContainerClient):
    await container.create_container()
    sources = {f"picture {i}_{1700000000000 + 1000 * i}.png": png_bytes(i) for i in range(12)}
    for name, data in sources.items():
        await container.upload_blob(name, data)
    reports = await asyncio.gather(migrate(container), migrate(container))
    assert all(report.ok for report in reports), [printed(report) for report in reports]
    assert sorted([blob.name async for blob in container.list_blobs()]) == sorted(target_of(s) for s in sources)
    for source, data in sources.items():
        assert await read(container, target_of(source)) == data


async def test_sources_at_the_last_millisecond_the_scheme_names_are_not_pushed_past_it(container: ContainerClient):
    await container.create_container()
    last = naming.MAX_TS
    await container.upload_blob(f"the end_{last}.png", png_bytes(1))
    await container.upload_blob(f"the  end_{last}.png", png_bytes(2))  # the same title, other bytes
    report = await migrate(container)
    assert report.count(Action.MOVED) == 1 and report.count(Action.CONFLICT) == 1
    copies = [blob.name async for blob in container.list_blobs(name_starts_with="gallery/")]
    assert len(copies) == 1 and naming.parse_gallery_name(copies[0]) is not None  # a name getImages can read


async def test_sources_that_make_one_name_take_the_next_milliseconds_and_the_dry_run_says_so(
    container: ContainerClient,
):
    # A title drops control characters and folds whitespace: three Node names, one target name.
    await container.create_container()
    tab, two_spaces, space = "B\tcat_1690000000010.png", "B  cat_1690000000010.png", "B cat_1690000000010.png"
    for name, data in ((tab, png_bytes(1)), (two_spaces, png_bytes(2)), (space, png_bytes(2))):
        await container.upload_blob(name, data)  # the last two: the same bytes under two prompts
    first = naming.name_for("B cat", 1_690_000_000_010, "image/png")

    dry = await migrate(container, dry_run=True)
    report = await migrate(container)
    again = await migrate(container)

    # In listing order, each picture at the next free millisecond: the same bytes under
    # another prompt are another picture, not an earlier copy whose source may go.
    assert outcomes(dry) == outcomes(report) == {
        tab: (Action.MOVED, first.blob),
        two_spaces: (Action.MOVED, first.later().blob),
        space: (Action.MOVED, first.later(2).blob),
    }
    assert report.summary() == "moved 3, resumed 0, left 0, conflicts 0"
    assert dry.summary() == f"dry run, nothing changed; a run would have: {report.summary()}"
    assert report.ok and again.ok and again.outcomes == []
    assert set(await snapshot(container)) == {first.blob, first.later().blob, first.later(2).blob}
    prompts = {}
    for name in (first, first.later(), first.later(2)):
        properties = await container.get_blob_client(name.blob).get_blob_properties()
        prompts[unquote(properties.metadata["prompt"])] = await read(container, name.blob)
    assert prompts == {"B\tcat": png_bytes(1), "B  cat": png_bytes(2), "B cat": png_bytes(2)}


async def test_other_bytes_under_the_target_name_send_the_copy_a_millisecond_on_where_a_rerun_finds_it(
    container: ContainerClient, gallery: Gallery
):
    await seed(container, gallery)
    clashing = f"{LIGHTHOUSE}_1700000000000.png"
    taken = scheme_name(clashing)
    await container.upload_blob(taken.blob, png_bytes(77))

    dry = await migrate(container, dry_run=True)
    report = await migrate(container)

    for run in (dry, report):
        assert outcomes(run)[clashing] == (Action.MOVED, taken.later().blob)
        assert run.ok
    assert report.summary() == "moved 3, resumed 0, left 4, conflicts 0"
    assert await read(container, taken.blob) == png_bytes(77)  # what was there stays
    assert await read(container, taken.later().blob) == NODE_BLOBS[clashing][1]
    properties = await container.get_blob_client(taken.later().blob).get_blob_properties()
    assert datetime.fromisoformat(properties.metadata["created"]) == taken.later().created_at

    # Had that run stopped before deleting the source, the next one finds the copy instead of making another.
    await container.upload_blob(clashing, NODE_BLOBS[clashing][1])
    dry_rerun = await migrate(container, dry_run=True)
    rerun = await migrate(container)

    for run in (dry_rerun, rerun):
        assert outcomes(run)[clashing] == (Action.RESUMED, taken.later().blob)
    assert rerun.ok and rerun.summary() == "moved 0, resumed 1, left 4, conflicts 0"
    names = set(await snapshot(container))
    assert clashing not in names and taken.later(2).blob not in names


async def test_a_name_taken_at_every_millisecond_tried_is_a_conflict(
    container: ContainerClient, gallery: Gallery
):
    await seed(container, gallery)
    clashing = f"{LIGHTHOUSE}_1700000000000.png"
    await take_every_name_from(container, scheme_name(clashing))

    dry = await migrate(container, dry_run=True)
    report = await migrate(container)

    for run in (dry, report):
        assert outcomes(run)[clashing] == (Action.CONFLICT, target_of(clashing))
        assert not run.ok
    assert report.summary() == "moved 2, resumed 0, left 4, conflicts 1"
    assert conflict_line(clashing) in printed(report)
    assert await read(container, clashing) == NODE_BLOBS[clashing][1]  # the source stays
    assert await read(container, target_of(clashing)) == png_bytes(77)  # and so does what was there


async def test_the_copy_is_named_and_typed_by_what_the_bytes_really_are(container: ContainerClient):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "teal").save(buffer, "JPEG")
    await container.create_container()
    await container.upload_blob("a jpeg all along_1700000004000.png", buffer.getvalue())

    report = await migrate(container)

    target = "gallery/8299999995999_a jpeg all along_1700000004000.jpg"
    assert outcomes(report) == {"a jpeg all along_1700000004000.png": (Action.MOVED, target)}
    properties = await container.get_blob_client(target).get_blob_properties()
    assert properties.content_settings.content_type == "image/jpeg"


async def test_a_name_taken_while_the_copy_was_on_its_way_sends_the_copy_a_millisecond_on(
    lossy_storage: LossyStorage, azurite: Azurite, container_name: str
):
    # The target name was free when read, but another picture took it before the copy arrived
    # (create-only, so the copy fails): that is not this picture's copy, and the source must not
    # be deleted as if it were. The copy goes to the next millisecond, as on any clash.
    source = "cat_1700000000000.png"
    target = scheme_name(source)
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as direct, \
            open_service_client(Settings.from_env().require_storage()) as through_proxy:
        container = direct.get_container_client(container_name)
        await container.create_container()
        await container.upload_blob(source, png_bytes(1))
        lossy_storage.hold("PUT", "/gallery/", 1.0, count=1)
        run = asyncio.create_task(migrate(through_proxy.get_container_client(container_name)))
        while not any(seen.startswith("PUT ") and "/gallery/" in seen for seen in lossy_storage.seen):
            await asyncio.sleep(0.01)  # the copy is on its way, held 1 s ...
        await container.upload_blob(target.blob, png_bytes(2))  # ... and another picture takes the name
        report = await run
        assert outcomes(report) == {source: (Action.MOVED, target.later(1).blob)}
        assert await read(container, target.blob) == png_bytes(2)
        assert await read(container, target.later(1).blob) == png_bytes(1)
        assert await blob_names(container) == sorted([target.blob, target.later(1).blob])


async def test_a_source_leased_by_another_tool_is_an_error_and_the_run_goes_on(container: ContainerClient):
    # Storage refuses to delete a blob under a lease: that blob's outcome says so, the blobs after
    # it still move, and the run is not ok (the command exits 1). A run after the lease ends resumes it.
    await container.create_container()
    leased, free = "leased_1700000000000.png", "free_1700000001000.png"
    await container.upload_blob(leased, png_bytes(1))
    await container.upload_blob(free, png_bytes(2))
    lease = await container.get_blob_client(leased).acquire_lease()

    report = await migrate(container)

    assert outcomes(report) == {
        leased: (Action.ERROR, "storage answered 412 LeaseIdMissing"),
        free: (Action.MOVED, target_of(free)),
    }
    assert not report.ok
    assert sorted(await blob_names(container)) == sorted([leased, target_of(leased), target_of(free)])
    await lease.release()
    assert outcomes(await migrate(container)) == {leased: (Action.RESUMED, target_of(leased))}


async def test_credentials_that_may_read_but_not_write_stop_the_run_at_the_first_refusal(container: ContainerClient):
    # As with an identity holding Storage Blob Data Reader, not Contributor: storage refuses the
    # first copy (403 AuthorizationPermissionMismatch), and every later one would be refused the same.
    # The run stops there, saying why, rather than reading every picture to print the same error.
    await container.create_container()
    for ts in range(3):
        await container.upload_blob(f"picture {ts}_170000000{ts}000.png", png_bytes(ts))
    before = await snapshot(container)
    read_only = generate_container_sas(ACCOUNT, container.container_name, account_key=KEY, permission="rl",
                                       expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    seen: list[Outcome] = []

    async with ContainerClient.from_container_url(container.url, credential=read_only) as reader:
        with pytest.raises(HttpResponseError) as refused:
            await migrate(reader, progress=seen.append)

    assert seen == []
    assert describe(refused.value) == (
        "storage answered 403 AuthorizationPermissionMismatch: the identity signed in may not move pictures; "
        "give it Storage Blob Data Contributor on the account"
    )
    assert await snapshot(container) == before


async def test_a_blob_larger_than_any_picture_is_left_unread(container: ContainerClient):
    # PNG-shaped from end to end, but larger than generateImage ever stores (MAX_IMAGE_BYTES).
    oversized = png_bytes()[:16] + bytes(MAX_IMAGE_BYTES) + png_bytes()[-12:]
    await container.create_container()
    await container.upload_blob("a giant_1700000005000.png", oversized)

    report = await migrate(container)

    assert outcomes(report) == {
        "a giant_1700000005000.png": (Action.LEFT, f"{len(oversized)} bytes, too large for a picture")
    }
    assert await blob_names(container) == ["a giant_1700000005000.png"]


async def test_a_container_that_does_not_exist_has_nothing_to_migrate(container: ContainerClient):
    report = await migrate(container)
    assert report.outcomes == [] and report.ok


def test_a_name_is_printed_on_one_line():
    outcome = Outcome("two\nlines 🦊_1700000000000.png", Action.LEFT, reason=NOT_AN_IMAGE)
    assert outcome.line() == f"left: two\\nlines 🦊_1700000000000.png: {NOT_AN_IMAGE}"


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "visionary", "migrate", *args, *NO_LOCAL_SETTINGS]


def command_env(connection_string: str, container: ContainerClient) -> dict[str, str]:
    return {
        **ROOT_ENV,
        "VISIONARY_STORAGE_CONNECTION_STRING": connection_string,
        "VISIONARY_CONTAINER": container.container_name,
    }


def run_cli(connection_string: str, container: ContainerClient, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*args), cwd=ROOT, env=command_env(connection_string, container),
        capture_output=True, text=True, encoding="utf-8", timeout=120, check=False,
    )


async def test_the_command_prints_the_plan_of_a_dry_run(
    container: ContainerClient, gallery: Gallery, storage_env: Azurite
):
    await seed(container, gallery)
    before = await snapshot(container)

    result = run_cli(storage_env.connection_string, container, "--dry-run")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines == printed(await migrate(container, dry_run=True))  # the report, line for line
    assert "would move: a_b_c_1700000001000.png -> gallery/8299999998999_a b c_1700000001000.png" in lines
    assert f"left: notes.txt: {NOT_A_NODE_NAME}" in lines
    assert lines[-1] == "dry run, nothing changed; a run would have: moved 3, resumed 0, left 4, conflicts 0"
    assert "AccountKey" not in result.stdout and storage_env.connection_string not in result.stdout
    assert await snapshot(container) == before


@pytest.mark.parametrize("blobs", ["some", "none"])  # with none, the summary is the first line printed
async def test_the_command_stops_cleanly_when_its_output_is_closed(
    container: ContainerClient, gallery: Gallery, storage_env: Azurite, blobs: str
):
    # As when piped into `head`: the reader has gone before the plan is printed.
    if blobs == "some":
        await seed(container, gallery)
    process = subprocess.Popen(
        command("--dry-run"), cwd=ROOT, env=command_env(storage_env.connection_string, container),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 1
    assert stderr == "Stopped: the output was closed. Run again: it resumes where this run stopped.\n"


async def test_the_command_exits_1_on_a_conflict(
    container: ContainerClient, gallery: Gallery, storage_env: Azurite
):
    await seed(container, gallery)
    clashing = "a_b_c_1700000001000.png"
    await take_every_name_from(container, scheme_name(clashing))

    result = run_cli(storage_env.connection_string, container)

    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert conflict_line(clashing) in lines
    assert lines[-1] == "moved 2, resumed 0, left 4, conflicts 1"


async def test_the_command_says_what_storage_answered_and_never_the_key(
    container: ContainerClient, gallery: Gallery, storage_env: Azurite
):
    await seed(container, gallery)
    wrong_key = base64.b64encode(b"not the account key, 32 bytes!!").decode()

    result = run_cli(storage_env.connection_string.replace(KEY, wrong_key), container)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Stopped: storage answered 403 AuthorizationFailure: storage refused these credentials or this machine "
        "(check the key, the sign-in, and the account's firewall). Run again: it resumes where this run stopped.\n"
    )
    assert wrong_key not in result.stderr


async def test_the_command_says_to_start_azurite_when_nothing_answers_at_its_address(container: ContainerClient):
    # Azurite not started yet: running again alone would meet the same closed port.
    port = free_port()
    connection_string = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                         f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};")

    result = run_cli(connection_string, container, "--dry-run")

    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        f"Stopped: storage could not be reached at 127.0.0.1:{port}: is Azurite running? Start it (make run starts "
        f"it on port 10000 with the app; npx azurite-blob --blobPort {port} --location .azurite --skipApiVersionCheck "
        "--disableTelemetry on any port). Run again: it resumes where this run stopped.\n"
    )


async def test_the_command_says_where_to_sign_in_when_no_sign_in_succeeds(model_server):
    # Keyless storage (VISIONARY_STORAGE_ACCOUNT_URL), run on a machine where no identity signs in:
    # the operator's own sign-in is missing here, not the Function App's managed identity.
    # (Run without blocking: the loopback identity endpoint answers on this test's event loop.)
    process = await asyncio.create_subprocess_exec(
        *command("--dry-run"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={
            **ROOT_ENV,
            "VISIONARY_STORAGE_ACCOUNT_URL": "https://127.0.0.1:9/devstoreaccount1",
            "IDENTITY_ENDPOINT": f"{model_server.url}/msi/token",
            "IDENTITY_HEADER": "not-the-header-the-identity-endpoint-wants",
        },
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)

    assert process.returncode == 1 and stdout == b""
    assert stderr.decode().splitlines()[-1] == (
        "Stopped: the sign-in to storage failed: the migration signs in with DefaultAzureCredential "
        "(`az login` on a workstation), as an identity with Storage Blob Data Contributor on the account. "
        "Run again: it resumes where this run stopped."
    )


@pytest.mark.parametrize(("setting", "value", "how"), [
    ("AzureWebJobsStorage__managedIdentityResourceId",
     "/subscriptions/0/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/gallery",
     "as the managed identity AzureWebJobsStorage__managedIdentityResourceId names, which signs in on Azure alone "
     "(on a workstation, unset that setting and `az login`)"),
    ("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential",
     "with DefaultAzureCredential as AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential narrows it, without "
     "`az login` (a managed identity signs in on Azure alone; on a workstation, unset that setting and `az login`)"),
])
async def test_the_command_names_the_sign_in_the_settings_choose_when_it_fails(model_server, setting, value, how):
    # Settings copied from the Function App make the migration sign in as its managed identity
    # alone: `az login` on its own would not help, so the message says what would.
    process = await asyncio.create_subprocess_exec(
        *command("--dry-run"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={
            **ROOT_ENV,
            "VISIONARY_STORAGE_ACCOUNT_URL": "https://127.0.0.1:9/devstoreaccount1",
            "IDENTITY_ENDPOINT": f"{model_server.url}/msi/token",
            "IDENTITY_HEADER": "not-the-header-the-identity-endpoint-wants",
            setting: value,
        },
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)

    assert process.returncode == 1 and stdout == b""
    assert stderr.decode().splitlines()[-1] == (
        f"Stopped: the sign-in to storage failed: the migration signs in {how}, as an identity with "
        "Storage Blob Data Contributor on the account. Run again: it resumes where this run stopped."
    )
