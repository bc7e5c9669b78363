from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs

import httpx
import pytest
from azure.storage.blob.aio import ContainerClient

from tests.conftest import Api, png_bytes
from visionary import sas
from visionary.errors import ApiError
from visionary.sas import AccountKeySigner, SasPolicy


@pytest.fixture
async def stored_blob(container: ContainerClient) -> str:
    await container.create_container()
    await container.upload_blob("gallery/probe.png", png_bytes(), overwrite=True)
    return "gallery/probe.png"


async def test_the_token_reads_but_cannot_list_write_or_delete(api: Api, stored_blob: str):
    answer = (await api.call("sasToken")).json()
    assert answer["permissions"] == "r"
    base, token = answer["containerUrl"], answer["sasToken"]
    async with httpx.AsyncClient() as http:
        read = await http.get(f"{base}/{stored_blob}?{token}")
        listing = await http.get(f"{base}?restype=container&comp=list&{token}")
        write = await http.put(
            f"{base}/gallery/intruder.png?{token}", content=b"x", headers={"x-ms-blob-type": "BlockBlob"}
        )
        overwrite = await http.put(
            f"{base}/{stored_blob}?{token}", content=b"x", headers={"x-ms-blob-type": "BlockBlob"}
        )
        delete = await http.delete(f"{base}/{stored_blob}?{token}")
        still_there = await http.get(f"{base}/{stored_blob}?{token}")
    assert read.status_code == 200 and read.content == png_bytes()
    assert [listing.status_code, write.status_code, overwrite.status_code, delete.status_code] == [403] * 4
    assert still_there.content == png_bytes()


NOON = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_the_token_lives_the_ttl_and_starts_five_minutes_back(api: Api, monkeypatch, storage_env):
    monkeypatch.setenv("VISIONARY_SAS_TTL_MINUTES", "45")
    monkeypatch.setattr(sas, "_utc_now", lambda: NOON + timedelta(minutes=7, seconds=30))
    answer = (await api.call("sasToken")).json()
    fields = parse_qs(answer["sasToken"])
    assert fields["sp"] == ["r"] and fields["sr"] == ["c"]
    # Windows are handed out in steps of five minutes (a sixth of the TTL, at most 5 min): this
    # one was issued at 12:05, starts five minutes before (for clocks behind storage's), and
    # lives 45 minutes from the end of its step, so at least 45 minutes from any time in it.
    assert utc(fields["st"][0]) == NOON
    assert utc(fields["se"][0]) == utc(answer["expiresOn"]) == NOON + timedelta(minutes=10 + 45)


async def test_ttl_is_capped_at_a_day(api: Api, monkeypatch, storage_env):
    monkeypatch.setenv("VISIONARY_SAS_TTL_MINUTES", str(7 * 24 * 60))
    monkeypatch.setattr(sas, "_utc_now", lambda: NOON)
    answer = (await api.call("sasToken")).json()
    assert utc(answer["expiresOn"]) == NOON + timedelta(minutes=5, hours=24)


def test_links_signed_within_one_step_are_the_same_link():
    policy = SasPolicy("acct", "images", "https://acct.blob.core.windows.net/images", ttl=timedelta(minutes=30))
    assert policy.window(NOON) == policy.window(NOON + timedelta(minutes=4, seconds=59))
    assert policy.window(NOON + timedelta(minutes=5)) != policy.window(NOON)
    for now in (NOON, NOON + timedelta(minutes=4, seconds=59)):
        start, expiry = policy.window(now)
        assert start <= now - timedelta(minutes=5) and timedelta(minutes=30) <= expiry - now <= timedelta(minutes=35)


async def test_a_signer_hands_out_one_link_a_window_and_the_next_windows_when_it_comes(monkeypatch):
    # Each signer keeps the link it signed last (signing took 0.15 ms of each generation's two
    # signs): kept too long, it would hand out links that expire early, or already have.
    policy = SasPolicy("acct", "images", "https://acct.blob.core.windows.net/images", ttl=timedelta(minutes=30))
    signer = AccountKeySigner(policy, "a2V5")
    links = []
    for now in (NOON, NOON + timedelta(minutes=4, seconds=59), NOON + timedelta(minutes=5), NOON):
        monkeypatch.setattr(sas, "_utc_now", lambda: now)
        link = await signer.sign()
        assert link == await AccountKeySigner(policy, "a2V5").sign()  # the link a new signer signs then
        links.append(link)
    assert links[0] == links[1] != links[2]
    assert utc(parse_qs(links[2].token)["st"][0]) == NOON and links[2].expires_on == NOON + timedelta(minutes=40)
    assert links[3] == links[0]  # a clock set back: its window's link again


async def test_a_refreshed_gallery_page_keeps_its_links_so_browsers_reuse_the_pictures(api: Api, offline_env):
    await api.generate({"prompt": "A lighthouse"})
    first, second = [(await api.get_images()).json()["imageUrls"][0]["url"] for _ in range(2)]
    if first != second:  # a step's end fell between the two: the next page is in the new step
        first, second = second, (await api.get_images()).json()["imageUrls"][0]["url"]
    assert first == second


async def test_https_only_off_the_emulator():
    def policy(url: str) -> SasPolicy:
        return SasPolicy("acct", "images", url, timedelta(minutes=30))

    https = await AccountKeySigner(policy("https://acct.blob.core.windows.net/images"), "a2V5").sign()
    emulator = await AccountKeySigner(policy("http://127.0.0.1:10000/acct/images"), "a2V5").sign()
    assert parse_qs(https.token)["spr"] == ["https"]
    assert "spr" not in parse_qs(emulator.token)


async def test_a_cdn_base_replaces_the_container_url(api: Api, monkeypatch, storage_env):
    monkeypatch.setenv("VISIONARY_PUBLIC_BASE_URL", "https://cdn.example.net/images/")
    answer = (await api.call("sasToken")).json()
    assert answer["containerUrl"] == "https://cdn.example.net/images"


def test_a_short_ttl_hands_out_links_in_steps_of_a_sixth_of_it():
    # Six minutes: one-minute steps, so a link lives six minutes at least and seven at most.
    policy = SasPolicy("acct", "images", "https://acct.blob.core.windows.net/images", ttl=timedelta(minutes=6))
    start, expiry = policy.window(NOON + timedelta(seconds=30))
    assert start == NOON - timedelta(minutes=5)
    assert expiry == NOON + timedelta(minutes=1 + 6)


async def test_expiry_is_written_in_utc_with_a_z(api: Api, monkeypatch, storage_env):
    monkeypatch.setattr(sas, "_utc_now", lambda: NOON)
    assert (await api.call("sasToken")).json()["expiresOn"] == "2026-11-21T12:35:00Z"


# A passphrase where the key belongs (read loosely, it decodes, and every link would be refused),
# and a key pasted with a zero-width space.
@pytest.mark.parametrize("key", ["my secret", "c2VjcmV0\u200b"])
def test_an_account_key_that_is_not_base64_is_named_without_being_shown(key: str):
    policy = SasPolicy("acct", "images", "https://acct.blob.core.windows.net/images", ttl=timedelta(minutes=30))
    with pytest.raises(ApiError) as refused:
        AccountKeySigner(policy, key)
    assert refused.value.code == "not_configured" and "accountKey" in refused.value.message
    assert key not in refused.value.message
