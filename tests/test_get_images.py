import asyncio
import base64
import time

import httpx
import pytest

from tests.azurite import KEY, Azurite
from tests.conftest import Api, png_bytes
from tests.lossy_storage import LossyStorage
from visionary.storage import Gallery


async def add(gallery: Gallery, count: int, start_ms: int = 1_763_700_000_000, label: str = "img") -> list[str]:
    blobs = []
    for i in range(count):
        gallery.clock = lambda i=i: start_ms + i
        blobs.append((await gallery.upload(png_bytes(i), "image/png", f"{label} {i}")).name.blob)
    return blobs


async def test_a_listed_url_serves_the_stored_png(api: Api, gallery: Gallery):
    await gallery.upload(png_bytes(7), "image/png", "A lighthouse at dusk, oil painting")
    answer = await api.get_images()
    assert answer.status == 200
    [image] = answer.json()["imageUrls"]
    assert image["prompt"] == "A lighthouse at dusk, oil painting"
    assert image["name"].startswith("A lighthouse at dusk, oil painting_") and image["name"].endswith(".png")
    assert image["blob"].startswith("gallery/")
    async with httpx.AsyncClient() as http:
        fetched = await http.get(image["url"])
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"
    assert fetched.content == png_bytes(7)


async def test_paging_walks_every_image_once_newest_first(api: Api, gallery: Gallery):
    blobs = await add(gallery, 23)
    seen, cursor, calls = [], None, 0
    while True:
        query = "limit=5" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.get_images(query)).json()
        calls += 1
        seen += [image["blob"] for image in page["imageUrls"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == sorted(blobs) == list(reversed(blobs))  # newest first
    assert calls == 5


async def test_images_added_later_do_not_shift_later_pages(api: Api, gallery: Gallery):
    blobs = await add(gallery, 10)
    first = (await api.get_images("limit=4")).json()
    await add(gallery, 3, start_ms=1_763_800_000_000, label="newer")
    second = (await api.get_images(f"limit=4&cursor={first['nextCursor']}")).json()
    newest_first = list(reversed(blobs))
    assert [i["blob"] for i in first["imageUrls"]] == newest_first[:4]
    assert [i["blob"] for i in second["imageUrls"]] == newest_first[4:8]
    top = (await api.get_images("limit=3")).json()
    assert [i["prompt"] for i in top["imageUrls"]] == ["newer 2", "newer 1", "newer 0"]


async def test_one_page_shares_one_sas(api: Api, gallery: Gallery):
    await add(gallery, 3)
    images = (await api.get_images()).json()["imageUrls"]
    assert len({image["url"].split("?", 1)[1] for image in images}) == 1


async def test_an_empty_or_missing_container_is_an_empty_page(api: Api, storage_env):
    answer = await api.get_images()
    assert answer.status == 200
    assert answer.json() == {"imageUrls": [], "nextCursor": None}


async def test_the_default_page_size_is_a_setting(api: Api, gallery: Gallery, monkeypatch):
    await add(gallery, 4)
    monkeypatch.setenv("VISIONARY_PAGE_SIZE", "3")
    page = (await api.get_images()).json()
    assert len(page["imageUrls"]) == 3 and page["nextCursor"]


@pytest.mark.parametrize("query", ["limit=0", "limit=-1", "limit=501", "limit=abc", "limit=1e3", "limit=", "limit=٣", "limit=" + "0" * 5000 + "5"])
async def test_a_bad_limit_is_a_400(api: Api, storage_env, query: str):
    answer = await api.get_images(query)
    assert answer.status == 400
    assert answer.json() == {"error": "limit must be a whole number from 1 to 500.", "code": "invalid_parameter"}


async def test_a_page_ending_at_a_long_foreign_name_walks_on(api: Api, gallery: Gallery, container):
    # Blobs a person or the old app wrote, one with a name of 400 emoji. A page that ends at
    # it has that name in its continuation token, and our cursor must carry it back.
    await add(gallery, 3)
    await container.upload_blob("gallery/9000000000000_" + "\U0001F600" * 400 + "_999999999999.png", png_bytes())
    await container.upload_blob("gallery/9999999999999_the oldest_0.png", png_bytes())
    first = (await api.get_images("limit=4")).json()
    assert first["nextCursor"]
    second = await api.get_images(f"limit=4&cursor={first['nextCursor']}")
    assert second.status == 200, second.body
    assert [image["prompt"] for image in second.json()["imageUrls"]] == ["the oldest"]


@pytest.mark.parametrize("mark", ["\t", "\n", "\r", "\x7f", "\x85"])
async def test_a_page_ending_at_a_name_with_a_tab_or_line_break_walks_on(api: Api, gallery: Gallery, container, mark):
    # A Node-version prompt that began with "gallery/" left its picture there, line breaks and all.
    await add(gallery, 3)
    await container.upload_blob(f"gallery/9000000000000_sunset{mark}over the sea_1690000000000.png", png_bytes())
    await container.upload_blob("gallery/9999999999999_the oldest_0.png", png_bytes())
    first = (await api.get_images("limit=4")).json()
    second = await api.get_images(f"limit=4&cursor={first['nextCursor']}")
    assert second.status == 200, second.body
    assert [image["prompt"] for image in second.json()["imageUrls"]] == ["the oldest"]


@pytest.mark.parametrize(
    "cursor",
    [
        "gallery/0000000000000_x_1.png",  # a bare Azurite marker, not our encoding
        "not-base64!",
        "eyJ2IjoxfQ",  # {"v":1} without a token
        "W10",  # []
        "x" * 5000,
    ],
)
async def test_a_cursor_that_is_not_ours_is_a_400(api: Api, gallery: Gallery, cursor: str):
    await add(gallery, 2)
    answer = await api.get_images(f"cursor={cursor}")
    assert answer.status == 400
    body = answer.json()
    assert body["code"] == "invalid_parameter" and "cursor" in body["error"]


async def test_without_storage_settings_both_endpoints_say_what_to_set(api: Api):
    for function in ("getImages", "sasToken"):
        answer = await api.call(function)
        assert answer.status == 503
        body = answer.json()
        assert body["code"] == "not_configured"
        for setting in ("VISIONARY_STORAGE_CONNECTION_STRING", "accountName", "AzureWebJobsStorage"):
            assert setting in body["error"]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"VISIONARY_CONTAINER": "Gallery_Images"}, "VISIONARY_CONTAINER"),
        ({"VISIONARY_SYSTEM_CONTAINER": "images"}, "VISIONARY_SYSTEM_CONTAINER"),  # the gallery's own
        ({"VISIONARY_STORAGE_ACCOUNT_URL": "http://127.0.0.1:10000/devstoreaccount1"}, "https://"),
        # The portal's "Blob service SAS URL": its SAS would ride along in every link.
        ({"VISIONARY_STORAGE_ACCOUNT_URL": "https://acct.blob.core.windows.net/?sv=2022-11-02&sp=rwdlac&sig=S3CRET"},
         "without a query"),
        # A custom domain: the storage SDK cannot tell the account's name, which signs the links.
        ({"VISIONARY_STORAGE_ACCOUNT_URL": "https://pictures.example.com"}, "must be the account's own"),
        # A private-link host: the SDK would read "acct.privatelink" as the account, and sign with it.
        ({"VISIONARY_STORAGE_ACCOUNT_URL": "https://acct.privatelink.blob.core.windows.net"},
         "must be the account's own"),
    ],
)
async def test_a_storage_setting_that_can_never_work_is_named_not_retried(api: Api, monkeypatch, settings, named):
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    for function in ("getImages", "sasToken"):
        answer = await api.call(function)
        assert (answer.status, answer.json()["code"]) == (503, "not_configured"), answer.body
        assert named in answer.json()["error"]


async def test_unreachable_storage_is_a_503_without_details(api: Api, monkeypatch):
    monkeypatch.setenv(
        "VISIONARY_STORAGE_CONNECTION_STRING",
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;",
    )
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "1")
    answer = await api.get_images()
    assert answer.status == 503
    assert answer.json()["code"] == "storage_unavailable"
    assert "a2V5" not in answer.text


async def test_a_refused_storage_request_is_logged_with_its_status_and_code(
    api: Api, azurite: Azurite, monkeypatch, caplog
):
    wrong_key = base64.b64encode(b"not the account key").decode()
    monkeypatch.setenv("VISIONARY_STORAGE_CONNECTION_STRING", azurite.connection_string.replace(KEY, wrong_key))
    answer = await api.get_images()
    assert answer.status == 503 and answer.json()["code"] == "storage_unavailable"
    [line] = [r.getMessage() for r in caplog.records if r.name == "visionary" and "storage" in r.getMessage()]
    assert line == "getImages: storage answered 403 AuthorizationFailure"


@pytest.mark.parametrize("identity", [
    {},  # the default chain
    {"AzureWebJobsStorage__managedIdentityResourceId":  # the identity endpoint's 401 comes back as is
     "/subscriptions/0/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/gallery"},
])
async def test_a_failed_sign_in_to_storage_is_logged_as_one(
    api: Api, model_server, monkeypatch, caplog, identity: dict[str, str]
):
    # Keyless storage whose managed identity is refused (no identity, a wrong header): storage
    # is never reached, and the log must not send the engineer looking for a network fault,
    # nor read the identity endpoint's 401 as storage's.
    for setting, value in identity.items():
        monkeypatch.setenv(setting, value)
    monkeypatch.setenv("VISIONARY_STORAGE_ACCOUNT_URL", "https://127.0.0.1:9/devstoreaccount1")
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{model_server.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-header-the-identity-endpoint-wants")
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "5")
    answer = await api.get_images()
    assert (answer.status, answer.json()["code"]) == (503, "storage_unavailable")
    [line] = [r.getMessage() for r in caplog.records if r.name == "visionary" and "storage" in r.getMessage()]
    assert line == "getImages: the sign-in to storage failed: check the Function App's managed identity"


def listed(answer) -> list[str]:
    return [image["blob"] for image in answer.json()["imageUrls"]]


def list_calls(storage: LossyStorage) -> list[str]:
    return [request for request in storage.seen if "comp=list" in request]


async def test_simultaneous_requests_for_one_page_share_a_list_call(
    api: Api, gallery: Gallery, lossy_storage: LossyStorage
):
    # A burst of visitors opening the gallery: each List Blobs answer costs the app ~18 ms of CPU.
    blobs = await add(gallery, 3)
    answers = await asyncio.gather(*[api.get_images("limit=2") for _ in range(32)])
    assert [answer.status for answer in answers] == [200] * 32
    assert [listed(answer) for answer in answers] == [blobs[:0:-1]] * 32
    assert len(list_calls(lossy_storage)) <= 2  # one, or one more for those that came after it began


async def test_a_request_made_while_a_list_call_is_under_way_sees_what_was_stored_before_it(
    api: Api, gallery: Gallery, lossy_storage: LossyStorage, container_name: str
):
    [older] = await add(gallery, 1, label="older")
    lossy_storage.delay_answer("GET", f"/{container_name}$", 0.5)  # the first page's answer comes late
    first = asyncio.create_task(api.get_images())
    # Its List Blobs call is made, its answer held back. (Only seen by the proxy, on a busy machine
    # it could still reach Azurite after the upload below, and list the newer picture too.)
    await lossy_storage.answer_held()
    [newer] = await add(gallery, 1, start_ms=1_763_800_000_000, label="newer")
    second = await api.get_images()
    assert listed(second) == [newer, older]  # not the answer of the call made before the upload
    assert listed(await first) == [older]


async def test_a_stuck_list_call_does_not_hold_up_the_visitors_after_it(
    api: Api, gallery: Gallery, lossy_storage: LossyStorage, container_name: str, monkeypatch
):
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "2")
    blobs = await add(gallery, 2)
    lossy_storage.drop("GET", f"/{container_name}$", 5)  # the first List Blobs call never answers
    stuck = asyncio.create_task(api.get_images())
    while not list_calls(lossy_storage):
        await asyncio.sleep(0.01)
    started = time.monotonic()
    later = await api.get_images()
    assert later.status == 200 and listed(later) == blobs[::-1]
    assert time.monotonic() - started < 1  # not the stuck call's 2 s, and its own call after
    assert (await stuck).status == 503
