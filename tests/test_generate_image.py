import asyncio
import base64
import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.storage.blob.aio import ContainerClient

from tests.azurite import ACCOUNT
from tests.azurite import KEY as ACCOUNT_KEY
from tests.conftest import AZURE_KEY, OPENAI_KEY, Api, blob_names
from tests.openai_server import OpenAIServer
from visionary import clients, images, sas
from visionary.errors import ApiError
from visionary.generation import Deadline, ImageRequest, generate_image
from visionary.images import GeneratedImage
from visionary.offline import OfflineImages, draw
from visionary.settings import Settings
from visionary.sas import SasPolicy, UserDelegationSigner
from visionary.storage import Gallery

PROMPT = "A lighthouse at dusk, oil painting"


async def fetch(url: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.get(url)


async def test_openai_base64_is_generated_stored_and_listed(api: Api, openai_env: OpenAIServer):
    openai_env.behaviour.revised_prompt = "A tall lighthouse on a cliff at dusk, thick oil paint"
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 201
    created = answer.json()
    assert created["message"] == "Image uploaded successfully"
    assert created["prompt"] == PROMPT
    assert created["revisedPrompt"] == "A tall lighthouse on a cliff at dusk, thick oil paint"
    assert created["model"] == "gpt-image-2"
    assert created["name"].startswith(PROMPT + "_") and created["blob"].startswith("gallery/")
    [call] = openai_env.model_calls()
    assert call.path == "/v1/images/generations"
    assert call.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert call.body == {"model": "gpt-image-2", "prompt": PROMPT, "size": "1024x1024", "n": 1}
    [listed] = (await api.get_images()).json()["imageUrls"]
    assert listed["blob"] == created["blob"] and listed["prompt"] == PROMPT
    served = await fetch(listed["url"])
    assert served.headers["content-type"] == "image/png"
    assert served.content == openai_env.behaviour.image == (await fetch(created["url"])).content


async def test_an_image_url_answer_is_downloaded(api: Api, openai_env: OpenAIServer, monkeypatch):
    monkeypatch.setenv("VISIONARY_IMAGE_MODEL", "compatible-diffusion")
    openai_env.behaviour.shape = "url"
    answer = await api.generate({"prompt": PROMPT, "size": "1536x1024"})
    assert answer.status == 201, answer.body
    assert answer.json()["model"] == "compatible-diffusion" and answer.json()["revisedPrompt"] is None
    assert [c.path for c in openai_env.calls][-1].startswith("/files/")
    assert openai_env.model_calls()[0].body["size"] == "1536x1024"
    assert (await fetch(answer.json()["url"])).content == openai_env.behaviour.image


async def test_an_image_url_that_redirects_is_followed(api: Api, openai_env: OpenAIServer):
    openai_env.behaviour.shape = "redirect"  # as a link to a CDN or a signed storage URL may
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 201, answer.body
    assert [c.path.split("/")[1] for c in openai_env.calls][-2:] == ["moved", "files"]
    assert (await fetch(answer.json()["url"])).content == openai_env.behaviour.image


async def test_a_picture_sent_inline_as_a_data_url_is_stored(api: Api, openai_env: OpenAIServer):
    # OpenedAI Images (Stable Diffusion, FLUX) answers `url` with the picture itself when no
    # response_format is asked for (the app asks for none: gpt-image models answer base64 anyway).
    openai_env.behaviour.shape = "data_url"
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 201, answer.body
    assert [c.path for c in openai_env.calls] == ["/v1/images/generations"]
    assert (await fetch(answer.json()["url"])).content == openai_env.behaviour.image


async def test_base64_with_a_data_url_head_is_the_picture(api: Api, openai_env: OpenAIServer):
    inline = "data:image/png;base64," + base64.b64encode(openai_env.behaviour.image).decode()
    openai_env.behaviour.raw_answer = (json.dumps({"created": 1, "data": [{"b64_json": inline}]}), "application/json")
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 201, answer.body
    assert (await fetch(answer.json()["url"])).content == openai_env.behaviour.image


async def test_a_model_named_in_any_script_is_stored_with_its_picture(
    api: Api, openai_env: OpenAIServer, container: ContainerClient, monkeypatch
):
    # Blob metadata must be ASCII: a compatible server's model name need not be, and storage
    # refused it after the model had been paid.
    monkeypatch.setenv("VISIONARY_IMAGE_MODEL", "modèle-1")
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 201, answer.body
    assert answer.json()["model"] == "modèle-1"
    properties = await container.get_blob_client(answer.json()["blob"]).get_blob_properties()
    assert properties.metadata["model"] == "mod%C3%A8le-1"


@pytest.mark.parametrize(
    "link",
    ["http://127.0.0.1:99999/x.png?sig=S", "http://[::1/x.png", "http://127.0.0.1:9/x\u0000.png",
     "http://\u00e9xample..com/x.png", "ftp://127.0.0.1/x.png", "/files/relative.png", "",
     "http://xn--/x.png", "http://xn--ls8h.la/x.png"],  # hosts IDNA cannot decode
)
async def test_a_broken_image_link_is_the_model_services_error(
    api: Api, openai_env: OpenAIServer, container, link: str
):
    openai_env.behaviour.link = link
    answer = await api.generate({"prompt": PROMPT})
    assert (answer.status, answer.json()["code"]) == (502, "upstream_error"), answer.body
    assert b"sig=S" not in answer.body
    assert await blob_names(container) == []


async def test_model_text_that_cannot_be_stored_is_cleaned_not_a_500(api: Api, openai_env: OpenAIServer):
    openai_env.behaviour.revised_prompt = "A lone \ud800 surrogate and a NUL\x00 in a revised prompt"
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 201, answer.body
    assert answer.json()["revisedPrompt"] == "A lone  surrogate and a NUL in a revised prompt"


async def test_azure_openai_with_a_key(api: Api, azure_env: OpenAIServer):
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 201, answer.body
    [call] = azure_env.model_calls()
    assert call.path == "/openai/deployments/gallery-images/images/generations"
    assert call.query["api-version"] == "2025-04-01-preview"
    assert call.headers["api-key"] == AZURE_KEY
    assert answer.json()["model"] == "gallery-images"


USER_ASSIGNED = "/subscriptions/0000/resourceGroups/gallery/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app"


@pytest.mark.parametrize(("setting", "value", "sent_as"), [
    (None, None, None),
    ("AZURE_CLIENT_ID", str(uuid.uuid4()), "client_id"),
    ("AzureWebJobsStorage__clientId", str(uuid.uuid4()), "client_id"),
    # As Bicep and Terraform often name the host's identity: by its resource id.
    ("AzureWebJobsStorage__managedIdentityResourceId", USER_ASSIGNED, "mi_res_id"),
])
async def test_azure_openai_with_managed_identity(api: Api, azure_env: OpenAIServer, monkeypatch, setting, value, sent_as):
    monkeypatch.delenv("AZURE_OPENAI_API_KEY")
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{azure_env.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", azure_env.identity_header)
    if setting:
        monkeypatch.setenv(setting, value)
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 201, answer.body
    [call] = azure_env.model_calls()
    assert call.headers["Authorization"] == f"Bearer {azure_env.tokens[-1]}"
    assert "api-key" not in call.headers
    [token_request] = [c for c in azure_env.calls if c.path == "/msi/token"]
    assert token_request.query["resource"] == "https://cognitiveservices.azure.com"
    identities = {name: token_request.query.get(name) for name in ("client_id", "mi_res_id")}
    assert identities == {name: value if name == sent_as else None for name in identities}


async def test_an_identity_without_its_role_on_azure_openai_is_told_which_role_it_needs(
    api: Api, azure_env: OpenAIServer, monkeypatch
):
    # Signed in without a key, with a token of an identity that lacks the role: there is no
    # API key setting to check.
    monkeypatch.delenv("AZURE_OPENAI_API_KEY")
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{azure_env.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", azure_env.identity_header)
    azure_env.behaviour.error = "permission_denied"
    for answer in (await api.generate({"prompt": PROMPT}), await api.suggest()):
        assert (answer.status, answer.json()["code"]) == (502, "upstream_error")
        assert "Cognitive Services OpenAI User" in answer.json()["error"], answer.json()


async def test_a_key_openai_refuses_is_told_to_check_the_key_and_no_azure_role(api: Api, openai_env: OpenAIServer):
    # OpenAI has no Cognitive Services roles: the key is all there is to check.
    openai_env.behaviour.error = "bad_key"
    for answer in (await api.generate({"prompt": PROMPT}), await api.suggest()):
        assert (answer.status, answer.json()["code"]) == (502, "upstream_error")
        assert answer.json()["error"] == "The model service refused our credentials; check OPENAI_API_KEY."


async def test_a_model_the_account_may_not_use_is_a_refusal_of_our_credentials_not_a_blip(
    api: Api, openai_env: OpenAIServer, container
):
    openai_env.behaviour.error = "unverified_organization"  # a 403: no retry mends it
    answer = await api.generate({"prompt": PROMPT})
    assert (answer.status, answer.json()["code"]) == (502, "upstream_error")
    assert answer.json()["error"].startswith("The model service refused our credentials; check OPENAI_API_KEY")
    assert len(openai_env.model_calls()) == 1 and await blob_names(container) == []


async def test_offline_draws_the_same_picture_for_the_same_prompt(api: Api, offline_env):
    first = (await api.generate({"prompt": PROMPT})).json()
    second = (await api.generate({"prompt": PROMPT})).json()
    assert first["model"] == "offline" and first["blob"] != second["blob"]
    first_bytes, second_bytes = (await fetch(first["url"])).content, (await fetch(second["url"])).content
    assert first_bytes == second_bytes == draw(PROMPT)
    assert draw("a fox in the snow, watercolor") != first_bytes
    assert [i["blob"] for i in (await api.get_images()).json()["imageUrls"]] == [second["blob"], first["blob"]]


async def test_no_model_service_is_a_503_naming_the_settings(api: Api, storage_env, container):
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 503
    body = answer.json()
    assert body["code"] == "not_configured"
    assert all(name in body["error"] for name in ("OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "VISIONARY_PROVIDER"))
    assert await blob_names(container) == []


@pytest.mark.parametrize(
    ("error", "status", "code", "model_calls"),
    [
        ("content_policy", 400, "content_policy_violation", 1),
        ("moderation_blocked", 400, "content_policy_violation", 1),
        ("content_filter", 400, "content_policy_violation", 1),
        ("content_filter_image", 400, "content_policy_violation", 1),
        ("content_policy_code_null", 400, "content_policy_violation", 1),
        ("content_policy_via_litellm", 400, "content_policy_violation", 1),
        ("server_error", 502, "upstream_error", 2),  # one try and the SDK's one retry
        ("bad_key", 502, "upstream_error", 1),
        ("slow", 504, "upstream_timeout", 2),
        ("malformed_json", 502, "upstream_error", 1),
        ("truncated_b64", 502, "upstream_error", 1),
        ("html_url", 502, "upstream_error", 1),
        ("oversized", 502, "upstream_error", 1),
        ("endless", 502, "upstream_error", 1),
        ("cut_off", 502, "upstream_error", 1),
        ("stalled", 504, "upstream_timeout", 1),  # not retried: the picture was drawn, and paid for
        ("bad_gzip", 502, "upstream_error", 1),
    ],
)
async def test_model_failures_map_to_errors_and_store_nothing(
    api: Api, openai_env: OpenAIServer, container: ContainerClient, monkeypatch, error, status, code, model_calls
):
    if error in ("slow", "stalled"):
        monkeypatch.setenv("VISIONARY_MODEL_TIMEOUT_SECONDS", "0.5")
    openai_env.behaviour.error = error
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == status, answer.body
    assert answer.json()["code"] == code
    assert len(openai_env.model_calls()) == model_calls
    assert await blob_names(container) == []


async def test_a_model_answer_over_the_cap_is_refused_without_reading_it_whole(
    api: Api, openai_env: OpenAIServer, container: ContainerClient
):
    # A compatible server is anyone's: one that sends without end must not fill our memory.
    buffers = 16 * 1024 * 1024  # what the two sockets may hold when the app hangs up
    openai_env.behaviour.error = "endless"
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 502
    assert answer.json()["error"] == "The model's image is larger than 20 MB."
    assert images.MAX_ANSWER_BYTES <= openai_env.sent < images.MAX_ANSWER_BYTES + buffers
    # One that says up front it will send too much is not read at all.
    openai_env.behaviour.error = "oversized"
    answer = await api.generate({"prompt": PROMPT})
    assert answer.json()["error"] == "The model's image is larger than 20 MB."
    assert openai_env.sent < buffers
    openai_env.behaviour.error = "cut_off"
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 502
    assert answer.json()["error"] == "The model service's answer was cut off; try again."
    assert await blob_names(container) == []


async def test_a_model_429_passes_its_retry_after_on(api: Api, openai_env: OpenAIServer, container, monkeypatch):
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "0")
    openai_env.behaviour.error = "rate_limit"
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 429
    assert answer.headers["Retry-After"] == "7"
    assert answer.json()["code"] == "rate_limited"
    assert await blob_names(container) == []


async def test_storage_failure_after_drawing_is_a_503(api: Api, openai_env: OpenAIServer, monkeypatch):
    monkeypatch.setenv(
        "VISIONARY_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;",
    )
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 503
    assert answer.json()["code"] == "storage_unavailable"


async def test_a_link_storage_will_not_sign_fails_before_the_model_is_paid(
    openai_env: OpenAIServer, gallery: Gallery, container: ContainerClient
):
    # A delegation key needs a token; storage refuses a shared-key request for one (403),
    # as it refuses an identity without the Storage Blob Delegator role.
    policy = SasPolicy(ACCOUNT, container.container_name, container.url, timedelta(minutes=30))
    gallery.signer = UserDelegationSigner(policy, gallery.service)
    app = clients.current()
    with pytest.raises(ClientAuthenticationError):
        await generate_image(ImageRequest(PROMPT, "1024x1024"), app.images, gallery, app.guards)
    assert openai_env.model_calls() == []
    assert await blob_names(container) == []


async def test_the_link_lives_its_whole_lifetime_from_the_answer_however_long_the_model_took(
    gallery: Gallery, container: ContainerClient, monkeypatch
):
    clock = [datetime.now(timezone.utc)]
    monkeypatch.setattr(sas, "_utc_now", lambda: clock[0])

    class TenMinuteModel:
        async def generate(self, prompt: str, size: str) -> GeneratedImage:
            clock[0] += timedelta(minutes=10)
            return await OfflineImages().generate(prompt, size)

    created = await generate_image(ImageRequest(PROMPT, "1024x1024"), TenMinuteModel(), gallery, clients.current().guards)
    lifetime = timedelta(minutes=Settings.from_env().require_storage().sas_ttl_minutes)
    assert created.sas.expires_on >= clock[0] + lifetime


async def test_a_stored_picture_is_answered_with_the_early_link_when_storage_cannot_sign_again(
    gallery: Gallery, container: ContainerClient
):
    # Storage signed the first link and took the upload, then failed to sign again (a delegation
    # key's refresh, say): the picture is stored, so the answer is its 201 with the link signed
    # before the model, which still works, not a 503 whose retry would draw and store it twice.
    class Unreachable:
        async def sign(self) -> sas.ReadSas:
            raise ServiceRequestError("storage unreachable")

    class ModelAfterWhichSigningFails:
        async def generate(self, prompt: str, size: str) -> GeneratedImage:
            gallery.signer = Unreachable()
            return await OfflineImages().generate(prompt, size)

    request = ImageRequest(PROMPT, "1024x1024")
    created = await generate_image(request, ModelAfterWhichSigningFails(), gallery, clients.current().guards)
    assert await blob_names(container) == [created.stored.name.blob]
    picture = await fetch(created.to_json()["url"])
    assert picture.status_code == 200 and picture.content == draw(PROMPT)


async def test_a_link_storage_is_slow_to_sign_again_waits_no_longer_than_the_deadline(
    gallery: Gallery, container: ContainerClient
):
    # The picture is stored with a third of a second left of the request, and signing again would
    # take longer (storage slow to hand out a delegation key): the answer comes in time, with the
    # early link, not when the storage timeout runs out.
    clock = [0.0]
    signer = gallery.signer

    class SlowSecondTime:
        async def sign(self) -> sas.ReadSas:
            await asyncio.sleep(5)
            return await signer.sign()

    class ModelThatTakesAllItsTime:
        async def generate(self, prompt: str, size: str) -> GeneratedImage:
            gallery.signer = SlowSecondTime()
            clock[0] = 60 - 0.3  # the time left now: a third of a second
            return await OfflineImages().generate(prompt, size)

    started = time.monotonic()
    request, deadline = ImageRequest(PROMPT, "1024x1024"), Deadline(60, clock=lambda: clock[0])
    model, guards = ModelThatTakesAllItsTime(), clients.current().guards
    created = await generate_image(request, model, gallery, guards, None, deadline)
    assert time.monotonic() - started < 2
    assert await blob_names(container) == [created.stored.name.blob]
    assert (await fetch(created.to_json()["url"])).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "invalid_json"),
        (b"\xff\xfe{}", 400, "invalid_json"),
        ([{"prompt": PROMPT}], 400, "invalid_json"),
        ({}, 400, "invalid_prompt"),
        ({"prompt": 42}, 400, "invalid_prompt"),
        ({"prompt": None}, 400, "invalid_prompt"),
        ({"prompt": ["a"]}, 400, "invalid_prompt"),
        ({"prompt": "   \n\t "}, 400, "invalid_prompt"),
        ({"prompt": "a\x00b"}, 400, "invalid_prompt"),
        (b'{"prompt": "a \\ud800 b"}', 400, "invalid_prompt"),
        ({"prompt": "x" * 4001}, 400, "prompt_too_long"),
        ({"prompt": PROMPT, "size": "999x999"}, 400, "invalid_parameter"),
        ({"prompt": PROMPT, "size": 1024}, 400, "invalid_parameter"),
        ({"prompt": "x" * 70_000}, 413, "payload_too_large"),
    ],
)
async def test_bad_requests_are_rejected_before_any_model_call(
    api: Api, openai_env: OpenAIServer, container, body, status, code
):
    answer = await api.generate(body)
    assert answer.status == status
    assert answer.json()["code"] == code
    assert openai_env.model_calls() == []
    assert await blob_names(container) == []


async def test_the_prompt_limit_is_a_setting(api: Api, openai_env: OpenAIServer, monkeypatch):
    monkeypatch.setenv("VISIONARY_MAX_PROMPT_CHARS", "10")
    answer = await api.generate({"prompt": "eleven char"})
    assert answer.json() == {"error": "The prompt is longer than 10 characters; shorten it.", "code": "prompt_too_long"}
    assert (await api.generate({"prompt": "ten chars!"})).status == 201  # the limit itself is allowed


async def test_a_body_of_64_kb_is_taken_and_one_byte_more_is_too_large(api: Api, openai_env: OpenAIServer):
    def body_of(size: int) -> bytes:
        # The prompt, and a field the app ignores that fills the body up to `size` bytes.
        start, end = b'{"prompt": "' + PROMPT.encode() + b'", "note": "', b'"}'
        return start + b"." * (size - len(start) - len(end)) + end

    assert (await api.generate(body_of(64 * 1024))).status == 201
    answer = await api.generate(body_of(64 * 1024 + 1))
    assert (answer.status, answer.json()["code"]) == (413, "payload_too_large")


async def test_the_longest_prompt_the_setting_allows_fits_the_body_limit(
    api: Api, openai_env: OpenAIServer, monkeypatch
):
    # 30,000 emoji as JSON's \u escapes: 360 KB, over the 64 KB that serves the default limit.
    monkeypatch.setenv("VISIONARY_MAX_PROMPT_CHARS", "30000")
    assert (await api.generate({"prompt": "\U0001F600" * 30_000})).status == 201
    assert (await api.generate({"prompt": "x" * 30_001})).json()["code"] == "prompt_too_long"


async def test_the_node_frontend_call_still_works(api: Api, openai_env: OpenAIServer):
    # The Node version's frontends send only {"prompt"} and read the gallery right after.
    answer = await api.generate({"prompt": "Cat in space, watercolor"})
    assert answer.status == 201
    first = (await api.get_images()).json()["imageUrls"][0]
    assert first["name"].split("_")[0] == "Cat in space, watercolor"


async def times_out_within(
    seconds: float, api: Api, container: ContainerClient, headers: dict[str, str] | None = None
) -> float:
    """Ask for a picture that must time out: 504 within `seconds`, and nothing stored. How long it took."""
    started = time.monotonic()
    answer = await api.generate({"prompt": PROMPT}, headers=headers)
    elapsed = time.monotonic() - started
    assert (answer.status, answer.json()["code"]) == (504, "upstream_timeout"), answer.body
    assert elapsed < seconds, elapsed
    assert await blob_names(container) == []
    return elapsed


async def test_the_model_deadline_bounds_all_retries(api: Api, openai_env: OpenAIServer, container, monkeypatch):
    # Azure's front end ends HTTP requests at 230 s: the app answers 504 before, whatever the retries.
    monkeypatch.setenv("VISIONARY_MODEL_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "3")
    monkeypatch.setenv("VISIONARY_MODEL_DEADLINE_SECONDS", "0.5")
    openai_env.behaviour.error = "slow"
    await times_out_within(2, api, container)


async def test_the_model_deadline_covers_downloading_a_url_answer(
    api: Api, openai_env: OpenAIServer, container, monkeypatch
):
    monkeypatch.setenv("VISIONARY_MODEL_DEADLINE_SECONDS", "0.5")
    openai_env.behaviour.shape = "url"
    openai_env.behaviour.file_delay = 10  # a link that answers slower than any deadline
    await times_out_within(2, api, container)


async def test_a_link_silent_for_longer_than_a_download_may_wait_is_a_timeout(
    api: Api, openai_env: OpenAIServer, container, monkeypatch
):
    # httpx gives up on a silent link at its own read timeout (30 s), long before the model's 180 s.
    monkeypatch.setattr(images, "DOWNLOAD_TIMEOUT", httpx.Timeout(0.2))
    openai_env.behaviour.shape = "url"
    openai_env.behaviour.file_delay = 10
    await times_out_within(2, api, container)


async def test_a_download_takes_no_longer_than_one_model_attempt(
    api: Api, openai_env: OpenAIServer, container, monkeypatch
):
    monkeypatch.setenv("VISIONARY_MODEL_TIMEOUT_SECONDS", "0.5")
    openai_env.behaviour.shape = "url"
    openai_env.behaviour.file_delay = 3  # within httpx's 30 s a read, over the 0.5 s an attempt has
    await times_out_within(2, api, container)


async def test_the_request_deadline_bounds_the_model_and_leaves_time_for_storage(
    api: Api, openai_env: OpenAIServer, container, monkeypatch
):
    # The model's own deadline (220 s) would let it run on; the request's leaves it what
    # remains after one storage timeout for the upload and one for the key's record.
    import visionary.images  # noqa: F401  # the model code loads on first use: not within these 2 s

    monkeypatch.setenv("VISIONARY_REQUEST_DEADLINE_SECONDS", "2")
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "0.5")
    openai_env.behaviour.error = "slow"
    key = {"Idempotency-Key": f"deadline-{uuid.uuid4()}"}  # the shared system container outlives the test
    elapsed = await times_out_within(2, api, container, headers=key)
    assert elapsed > 0.8, elapsed  # the model had about 1 s of the 2
    openai_env.behaviour.error = None  # the key was freed: the client's retry is drawn
    assert (await api.generate({"prompt": PROMPT}, headers=key)).status == 201


@pytest.mark.parametrize(
    ("key", "cap", "steps_after"),
    [(False, False, 1), (True, False, 2), (False, True, 2), (True, True, 3)],
    ids=["upload", "upload+key", "upload+cap", "upload+key+cap"],
)
async def test_the_model_gets_the_deadline_less_a_storage_timeout_for_each_step_after_it(
    openai_env: OpenAIServer, container_name: str, monkeypatch, key: bool, cap: bool, steps_after: int
):
    # After the model come the upload, the key's record and the cap's give-back: 1 s kept for each.
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("VISIONARY_SYSTEM_CONTAINER", f"system-{container_name}")
    if cap:
        monkeypatch.setenv("VISIONARY_MAX_IMAGES_PER_DAY", "100")
    app = clients.current()
    now = time.monotonic()
    openai_env.behaviour.error = "slow"

    async def code_with(seconds_for_model: float) -> str:
        # The request's clock stands still: the steps before the model take none of its time.
        deadline = Deadline(now + steps_after + seconds_for_model, clock=lambda: now)
        idempotency_key = f"share-{uuid.uuid4()}" if key else None
        with pytest.raises(ApiError) as failed:
            await generate_image(ImageRequest(PROMPT, "1024x1024"), app.images, app.gallery, app.guards,
                                 idempotency_key, deadline)
        return failed.value.code

    assert await code_with(-0.05) == "storage_unavailable"  # nothing left for the model: not called
    assert openai_env.model_calls() == []
    assert await code_with(0.2) == "upstream_timeout"  # 0.2 s left: called, and cut off
    assert len(openai_env.model_calls()) == 1


async def test_a_repeat_waits_for_the_first_request_as_long_as_its_own_deadline_leaves_it(
    openai_env: OpenAIServer, container_name: str, monkeypatch
):
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("VISIONARY_SYSTEM_CONTAINER", f"system-{container_name}")
    app = clients.current()
    openai_env.behaviour.delay = 3  # the first request is still drawing while the repeat waits
    key, request = f"repeat-{uuid.uuid4()}", ImageRequest(PROMPT, "1024x1024")
    first = asyncio.create_task(generate_image(request, app.images, app.gallery, app.guards, key))
    while not openai_env.model_calls():
        await asyncio.sleep(0.01)
    # 0.3 s for the wait, after a storage timeout each for the upload and the key's record,
    # on a clock of the request's own that stands still at 0.
    deadline = Deadline(2.3, clock=lambda: 0.0)
    started = time.monotonic()
    with pytest.raises(ApiError) as repeat:
        await generate_image(request, app.images, app.gallery, app.guards, key, deadline)
    waited = time.monotonic() - started
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert repeat.value.code == "in_progress"
    assert 0.3 <= waited < 1.5, waited  # not the ledger's own 30 s, and not at once


async def test_the_request_deadline_cuts_an_offline_drawing_short(api: Api, offline_env, container, monkeypatch):
    monkeypatch.setenv("VISIONARY_IMAGE_SIZES", "4096x4096")  # a second or more to draw
    monkeypatch.setenv("VISIONARY_REQUEST_DEADLINE_SECONDS", "1")
    # 0.3 s kept for the upload and 0.3 s for the key's record: the drawing gets under 0.4 s.
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "0.3")
    await times_out_within(1, api, container, headers={"Idempotency-Key": f"offline-deadline-{uuid.uuid4()}"})


async def test_a_deadline_without_room_for_the_storage_steps_is_named_by_generate_image_alone(
    api: Api, openai_env: OpenAIServer, monkeypatch
):
    monkeypatch.setenv("VISIONARY_STORAGE_TIMEOUT_SECONDS", "80")  # three of them: more than the 225 s
    refused = await api.generate({"prompt": PROMPT})
    assert (refused.status, refused.json()["code"]) == (503, "not_configured")
    assert "VISIONARY_REQUEST_DEADLINE_SECONDS" in refused.json()["error"]
    assert openai_env.model_calls() == []
    assert (await api.get_images()).status == 200  # the gallery keeps no time for later steps
    assert (await api.call("sasToken")).status == 200


async def test_a_request_whose_time_went_on_storage_never_reaches_the_model(
    openai_env: OpenAIServer, gallery: Gallery, container: ContainerClient
):
    app = clients.current()
    nearly_over = Deadline.after(gallery.timeout / 2)  # less than the upload's storage timeout
    with pytest.raises(ApiError) as refused:
        await generate_image(ImageRequest(PROMPT, "1024x1024"), app.images, gallery, app.guards, deadline=nearly_over)
    assert refused.value.status == 503 and refused.value.code == "storage_unavailable"
    assert openai_env.model_calls() == []
    assert await blob_names(container) == []


@pytest.mark.parametrize("shape", ["b64_json", "url"])
async def test_a_picture_over_the_size_cap_is_refused_and_not_stored(
    api: Api, openai_env: OpenAIServer, container: ContainerClient, monkeypatch, shape
):
    openai_env.behaviour.shape = shape
    size = len(openai_env.behaviour.image)
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", size - 1)
    answer = await api.generate({"prompt": PROMPT})
    assert answer.status == 502 and "larger than" in answer.json()["error"]
    assert await blob_names(container) == []
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", size)  # the cap itself is allowed
    assert (await api.generate({"prompt": PROMPT})).status == 201
