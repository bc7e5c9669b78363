"""Security defaults: what logs and error answers never carry, and what a gallery read link
cannot reach. Who may call (the triggers' auth level) is in test_function_app.py."""

import logging
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas
from azure.storage.blob.aio import ContainerClient

from tests import openai_server
from tests.azurite import KEY as ACCOUNT_KEY
from tests.conftest import OPENAI_KEY, Api, Response, png_bytes
from tests.openai_server import OpenAIServer
from visionary.settings import DEFAULT_SYSTEM_CONTAINER

PROMPT = "A lighthouse at dusk, oil painting"
# 200 characters that percent-encoding leaves as they are: a prompt that reached a logged URL
# (blob names carry the prompt) would be found whole.
LONG_PROMPT = ("Harbour-panorama.at-dawn.with-gulls-boats-nets.and-lanterns-" * 4)[:200]
UNREACHABLE_STORAGE = (
    f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
    "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
)


def signatures(*answers: Response) -> set[str]:
    """Every SAS signature in the JSON answers, as sent (percent-encoded) and decoded."""
    found = set()
    for answer in answers:
        if not answer.headers["Content-Type"].startswith("application/json"):
            continue
        for token in _sas_tokens(answer.json()):
            [sig] = parse_qs(token)["sig"]
            found |= {sig, token.split("sig=")[1].split("&")[0]}
    return found


def _sas_tokens(body: object) -> list[str]:
    if isinstance(body, dict):
        if "sasToken" in body:
            return [body["sasToken"]]
        if "url" in body:
            return [urlsplit(body["url"]).query]
        return [token for item in body.get("imageUrls", []) for token in _sas_tokens(item)]
    return []


async def all_four(api: Api, prompt: str) -> list[Response]:
    return [
        await api.generate({"prompt": prompt}),
        await api.get_images(),
        await api.call("sasToken"),
        await api.suggest(),
    ]


async def test_no_key_signature_or_long_prompt_in_any_log_line(
    api: Api, openai_env: OpenAIServer, caplog, monkeypatch
):
    caplog.set_level(logging.DEBUG)
    working = await all_four(api, LONG_PROMPT)
    openai_env.behaviour.error = "bad_key"
    refused = await all_four(api, LONG_PROMPT)
    openai_env.behaviour.error = None
    monkeypatch.setenv("VISIONARY_STORAGE_CONNECTION_STRING", UNREACHABLE_STORAGE)
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "1")
    storage_down = await all_four(api, LONG_PROMPT)

    assert [a.status for a in working + refused + storage_down] == [201, 200, 200, 200] + [502, 200, 200, 502] + [
        503, 503, 200, 200  # a SAS is signed with the key alone; suggestions need no storage
    ]
    secrets = {OPENAI_KEY, ACCOUNT_KEY, LONG_PROMPT[:81]} | signatures(*working, *refused, *storage_down)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    lines = [formatter.format(record) for record in caplog.records]  # with exc_text and stack, if any
    for line in lines:
        for secret in secrets:
            assert secret not in line, f"{secret[:12]}... logged: {line[:300]}"
    # not silent: every endpoint logged its outcome, the prompt cut to 80 characters
    outcomes = [r.getMessage() for r in caplog.records if r.name == "visionary" and " status=" in r.getMessage()]
    assert {line.split()[0] for line in outcomes} == {"generateImage", "getImages", "sasToken", "getChatGPTSuggestion"}
    assert any(f"prompt={LONG_PROMPT[:80]}" in line for line in outcomes if "status=503" in line)
    # a picture's line names the model that drew it and the blob that keeps it (its prompt cut too)
    drawn_by = working[0].json()["model"]
    assert any(line.startswith("generateImage status=201 ") and f" model={drawn_by}" in line
               and " blob=gallery/" in line for line in outcomes)
    # an error's line names its code, as the answer does
    assert any(line.startswith("getImages status=503 ") and " code=storage_unavailable" in line for line in outcomes)
    assert any(line.startswith("generateImage status=502 ") and " code=upstream_error" in line for line in outcomes)


async def test_a_refused_model_key_is_not_echoed(api: Api, openai_env: OpenAIServer):
    openai_env.behaviour.error = "bad_key"  # the model's 401 body quotes the key: "sk-test-*****"
    for answer in (await api.generate({"prompt": PROMPT}), await api.suggest()):
        assert (answer.status, answer.json()["code"]) == (502, "upstream_error")
        for leak in (OPENAI_KEY.encode(), b"sk-test", b"platform.openai.com", b"Incorrect API key"):
            assert leak not in answer.body


async def test_no_prompt_or_model_error_can_forge_a_log_line(api: Api, openai_env: OpenAIServer, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    forged = "x\ngenerateImage status=201 blob=forged.png"
    # Spaced with tabs too: a value with no space in it is logged unquoted.
    for prompt in (f"cat{forged}", f"cat{forged}".replace(" ", "\t")):
        assert (await api.generate({"prompt": prompt})).status == 201
    # A gateway's error whose code carries a newline and the key it was sent.
    monkeypatch.setitem(openai_server.IMAGE_ERRORS, "echo", (500, {"message": "no", "type": None, "param": None,
                                                                   "code": f"{OPENAI_KEY}{forged}"}))
    openai_env.behaviour.error = "echo"
    assert (await api.generate({"prompt": "dog"})).status == 502
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("visionary")]
    assert any("model service answered 500" in line for line in lines)
    for line in lines:
        assert "\n" not in line and "\r" not in line and OPENAI_KEY not in line, line


@pytest.mark.parametrize(
    "connection_string",
    [
        pytest.param(UNREACHABLE_STORAGE, id="unreachable"),
        pytest.param(UNREACHABLE_STORAGE + "NoEqualsSign", id="malformed"),
        pytest.param(UNREACHABLE_STORAGE.replace(ACCOUNT_KEY, "SECRET-key-not-base64"), id="key-not-base64"),
        # A key pasted with a zero-width space: not ASCII, which base64 refuses another way.
        pytest.param(UNREACHABLE_STORAGE.replace(ACCOUNT_KEY, ACCOUNT_KEY + "\u200b"), id="key-not-ascii"),
    ],
)
async def test_a_storage_failure_is_a_503_that_names_no_key(api: Api, offline_env, monkeypatch, connection_string):
    monkeypatch.setenv("VISIONARY_STORAGE_CONNECTION_STRING", connection_string)
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "1")
    key = connection_string.split("AccountKey=")[1].split(";")[0]
    for answer in (await api.generate({"prompt": PROMPT}), await api.get_images(), await api.call("sasToken")):
        if answer.status == 200:  # the SAS of a valid key needs no storage call
            continue
        assert answer.status == 503, answer.body
        assert answer.json()["code"] in ("storage_unavailable", "not_configured")
        for leak in (key, key[:20], "AccountKey", "127.0.0.1:9"):
            assert leak.encode() not in answer.body


async def test_the_gallery_sas_cannot_read_the_system_container(
    api: Api, container: ContainerClient, storage_env
):
    # The cost guard and idempotency records live beside the gallery, in the system container.
    await container.create_container()
    await container.upload_blob("gallery/probe.png", png_bytes())
    system = ContainerClient.from_connection_string(storage_env.connection_string, DEFAULT_SYSTEM_CONTAINER)
    record = f"security-probe-{uuid.uuid4().hex}.json"
    async with system:
        if not await system.exists():
            await system.create_container()
        await system.upload_blob(record, b'{"count": 1}')
        try:
            sas = (await api.call("sasToken")).json()
            account_url = sas["containerUrl"].rsplit("/", 1)[0]
            async with httpx.AsyncClient() as http:
                gallery_read = await http.get(f"{sas['containerUrl']}/gallery/probe.png?{sas['sasToken']}")
                system_read = await http.get(f"{account_url}/{DEFAULT_SYSTEM_CONTAINER}/{record}?{sas['sasToken']}")
                system_list = await http.get(
                    f"{account_url}/{DEFAULT_SYSTEM_CONTAINER}?restype=container&comp=list&{sas['sasToken']}"
                )
        finally:
            await system.delete_blob(record)
    assert gallery_read.status_code == 200  # the token works: its scope is what stops it
    assert (system_read.status_code, system_list.status_code) == (403, 403)
    assert b"count" not in system_read.content


async def test_a_sas_in_the_storage_endpoint_never_reaches_an_answer(
    api: Api, offline_env, storage_env, container_name, monkeypatch
):
    # A connection string whose BlobEndpoint carries a SAS of its own (written, listing, deleting):
    # the SDK keeps it in the client's URL, and links are built on that URL.
    powerful = generate_account_sas(
        "devstoreaccount1", ACCOUNT_KEY, ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, create=True),
        datetime.now(timezone.utc) + timedelta(hours=1),
    )
    endpoint = storage_env.blob_endpoint
    monkeypatch.setenv(
        "VISIONARY_STORAGE_CONNECTION_STRING",
        storage_env.connection_string.replace(f"BlobEndpoint={endpoint};", f"BlobEndpoint={endpoint}?{powerful};"),
    )
    created = await api.generate({"prompt": PROMPT})
    answers = [created, await api.get_images(), await api.call("sasToken")]
    assert [answer.status for answer in answers] == [201, 200, 200]
    powerful_sig = parse_qs(powerful)["sig"][0]
    for answer in answers:
        assert powerful_sig.encode() not in answer.body and b"sp=rwdlc" not in answer.body, answer.body
    assert answers[2].json()["containerUrl"] == f"{endpoint}/{container_name}"
    async with httpx.AsyncClient() as http:  # and the links still work
        assert (await http.get(created.json()["url"])).status_code == 200
