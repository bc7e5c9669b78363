"""Keyless storage: managed identity and user-delegation SAS, against Azurite in OAuth mode.

Azurite serves HTTPS with a certificate the test makes, and checks the bearer
tokens that azure-identity's DefaultAzureCredential fetches from a loopback App
Service managed-identity endpoint (IDENTITY_ENDPOINT + IDENTITY_HEADER). The app
runs as users run it, `python -m visionary serve`, trusting that certificate
through SSL_CERT_FILE. No account key is configured anywhere.
"""

import asyncio
import os
import signal
import ssl
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from azure.identity.aio import ManagedIdentityCredential
from azure.storage.blob.aio import BlobServiceClient

from tests.azurite import ACCOUNT, Azurite, free_port
from tests.conftest import ROOT_ENV
from tests.identity import self_signed_certificate
from tests.openai_server import OpenAIServer
from tests.served import ServedApp
from visionary.sas import CLOCK_SKEW, SasPolicy, UserDelegationSigner


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def oauth_azurite(tls, tmp_path_factory):
    cert, key = tls
    debug_log = tmp_path_factory.mktemp("azurite") / "debug.log"
    server = Azurite(free_port()).start("--oauth", "basic", "--cert", str(cert), "--key", str(key),
                                        "--debug", str(debug_log))
    yield server
    server.stop()


def keyless_env(tls, model_server: OpenAIServer, **storage: str) -> dict[str, str]:
    """An app process's environment: `storage` settings, no key, the loopback identity endpoint."""
    return {
        **ROOT_ENV,
        **storage,
        "VISIONARY_CONTAINER": f"keyless-{uuid.uuid4().hex[:12]}",
        "VISIONARY_PROVIDER": "offline",
        "IDENTITY_ENDPOINT": f"{model_server.url}/msi/token",
        "IDENTITY_HEADER": model_server.identity_header,
        "SSL_CERT_FILE": str(tls[0]),
    }


@pytest.fixture
def keyless_app(oauth_azurite: Azurite, tls, model_server: OpenAIServer):
    env = keyless_env(tls, model_server, VISIONARY_STORAGE_ACCOUNT_URL=oauth_azurite.blob_endpoint)
    app = ServedApp.start(free_port(), env)
    yield app
    output = app.stop()
    assert "AccountKey" not in output


@pytest.fixture
async def identity_storage(
    oauth_azurite: Azurite, tls, model_server: OpenAIServer, monkeypatch
) -> AsyncIterator[BlobServiceClient]:
    """Storage as the app's managed identity reaches it: tokens from the loopback identity endpoint."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{model_server.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", model_server.identity_header)
    credential = ManagedIdentityCredential()
    service = BlobServiceClient(oauth_azurite.blob_endpoint, credential, connection_verify=str(tls[0]))
    async with credential, service:
        yield service


def gallery_links(azurite: Azurite) -> SasPolicy:
    """The gallery's read links, thirty minutes long."""
    return SasPolicy(ACCOUNT, "images", f"{azurite.blob_endpoint}/images", ttl=timedelta(minutes=30))


def delegation_key_requests(azurite: Azurite) -> int:
    return azurite.debug_log.read_text().count("comp=userdelegationkey")


async def test_a_managed_identity_stores_lists_and_signs_read_only_links(
    keyless_app: ServedApp, oauth_azurite: Azurite, model_server: OpenAIServer, tls
):
    trusted = ssl.create_default_context(cafile=str(tls[0]))
    async with httpx.AsyncClient(base_url=keyless_app.url, timeout=30) as api, httpx.AsyncClient(verify=trusted) as blob:
        created = await api.post("/api/generateImage", json={"prompt": "A keyless lighthouse"})
        assert created.status_code == 201, created.text
        [listed] = (await api.get("/api/getImages")).json()["imageUrls"]
        assert listed["blob"] == created.json()["blob"]
        read = await blob.get(listed["url"])
        assert read.status_code == 200 and read.headers["content-type"] == "image/png"

        answer = (await api.get("/api/sasToken")).json()
        token = answer["sasToken"]
        fields = parse_qs(token)
        assert fields["sp"] == ["r"] and fields["spr"] == ["https"] and "skoid" in fields  # user delegation
        base = answer["containerUrl"]
        assert (await blob.get(f"{base}/{listed['blob']}?{token}")).content == read.content
        write = await blob.put(f"{base}/gallery/intruder.png?{token}", content=b"x",
                               headers={"x-ms-blob-type": "BlockBlob"})
        delete = await blob.delete(f"{base}/{listed['blob']}?{token}")
        assert (write.status_code, delete.status_code) == (403, 403)
        assert "AuthorizationPermissionMismatch" in write.text  # signature accepted, permission refused

    assert [call.path for call in model_server.calls].count("/msi/token") == 1  # the token is cached


async def test_fifty_links_cost_one_delegation_key(keyless_app: ServedApp, oauth_azurite: Azurite):
    before = delegation_key_requests(oauth_azurite)
    async with httpx.AsyncClient(base_url=keyless_app.url, timeout=30) as api:
        answers = await asyncio.gather(*[api.get("/api/sasToken") for _ in range(50)])
    assert [a.status_code for a in answers] == [200] * 50
    assert delegation_key_requests(oauth_azurite) - before == 1


@pytest.mark.parametrize(("account_setting", "identity_setting", "identity", "sent_as"), [
    ("AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__clientId", str(uuid.uuid4()), "client_id"),
    ("VISIONARY_STORAGE_ACCOUNT_URL", "AzureWebJobsStorage__clientId", str(uuid.uuid4()), "client_id"),
    ("AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__managedIdentityResourceId",
     "/subscriptions/0000/resourceGroups/gallery/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app",
     "mi_res_id"),
])
async def test_a_user_assigned_identity_named_for_the_host_signs_the_app_in(
    oauth_azurite: Azurite, tls, model_server: OpenAIServer, account_setting, identity_setting, identity, sent_as
):
    # An app with only a user-assigned identity names it once, for the Functions host's own
    # storage connection (by client id, or by resource id); the app's storage signs in as the same identity.
    env = keyless_env(tls, model_server, **{
        account_setting: oauth_azurite.blob_endpoint,
        "AzureWebJobsStorage__credential": "managedidentity",
        identity_setting: identity,
    })
    app = ServedApp.start(free_port(), env)
    try:
        async with httpx.AsyncClient(base_url=app.url, timeout=30) as api:
            assert (await api.post("/api/generateImage", json={"prompt": "A user-assigned lighthouse"})).status_code == 201
            assert (await api.get("/api/sasToken")).status_code == 200
    finally:
        app.stop()
    token_requests = [call for call in model_server.calls if call.path == "/msi/token"]
    assert token_requests and all(call.query.get(sent_as) == identity for call in token_requests)


async def test_a_key_refresh_that_fails_is_tried_again_not_papered_over(
    oauth_azurite: Azurite, identity_storage: BlobServiceClient
):
    now = datetime.now(timezone.utc)
    signer = UserDelegationSigner(gallery_links(oauth_azurite), identity_storage, clock=lambda: now)
    await signer.sign()
    now += timedelta(hours=2)  # the first key has expired
    os.kill(oauth_azurite.process.pid, signal.SIGSTOP)  # and storage does not answer the refresh
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                await signer.sign()
    finally:
        os.kill(oauth_azurite.process.pid, signal.SIGCONT)
    link = await signed_link(signer)
    assert link["ske"] >= link["se"]  # signed with a key that outlives the link


async def test_a_delegation_key_lives_from_the_start_of_the_links_it_signs(
    oauth_azurite: Azurite, identity_storage: BlobServiceClient
):
    # Late in a five-minute step, the step's links start up to ten minutes back (the step's
    # start, less the clock skew allowance); a key from "now less five minutes" began after them.
    policy = gallery_links(oauth_azurite)
    link_start, _ = policy.window(datetime.now(timezone.utc))
    late_in_the_step = link_start + CLOCK_SKEW + policy.step - timedelta(seconds=20)
    link = await signed_link(UserDelegationSigner(policy, identity_storage, clock=lambda: late_in_the_step))
    key_life = _utc(link["skt"]), _utc(link["ske"])
    assert key_life[0] <= _utc(link["st"]) < _utc(link["se"]) <= key_life[1]


async def test_a_delegation_key_is_reused_only_for_links_that_end_before_it(
    oauth_azurite: Azurite, identity_storage: BlobServiceClient
):
    # Azure refuses a link once the key that signed it has expired, whatever the link's own
    # expiry says: a key reused until just before its end would sign links that die early.
    now = datetime.now(timezone.utc)
    signer = UserDelegationSigner(gallery_links(oauth_azurite), identity_storage, clock=lambda: now)
    links, handed_out = [], []
    for _ in range(24):  # a link every five minutes for two hours
        links.append(await signed_link(signer))
        handed_out.append(now)
        now += timedelta(minutes=5)
    assert all(_utc(link["skt"]) <= _utc(link["st"]) < _utc(link["se"]) <= _utc(link["ske"]) for link in links)
    # each a link of its own time (the signer keeps its last link): alive for the TTL from then
    assert all(_utc(link["se"]) - time >= timedelta(minutes=30) for link, time in zip(links, handed_out))
    assert len({link["ske"] for link in links}) <= 3  # and a key still serves many links


async def signed_link(signer: UserDelegationSigner) -> dict[str, str]:
    """A fresh link's SAS fields: its window (st, se) and its key's (skt, ske)."""
    return {name: values[0] for name, values in parse_qs((await signer.sign()).token).items()}


def _utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
