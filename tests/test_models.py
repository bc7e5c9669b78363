import asyncio
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from tests.azurite import free_port
from tests.conftest import AZURE_KEY, OPENAI_KEY, Api, blob_names
from tests.openai_server import BROKEN_ERRORS, OpenAIServer
from visionary.errors import ApiError
from visionary.models import (
    DEFAULT_RETRY_AFTER_SECONDS,
    MAX_ERROR_ANSWER_BYTES,
    MAX_RETRY_AFTER_SECONDS,
    open_service,
    parse_json,
    retry_after,
)
from visionary.settings import Settings

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "7"}, 7),
        ({"retry-after": "0.2"}, 1),
        ({"retry-after-ms": "2500", "retry-after": "2"}, 3),  # OpenAI sends both; the finer wins
        ({"retry-after-ms": "soon", "retry-after": "60"}, 60),  # the SDK, too, waits out the one it reads
        ({"retry-after-ms": "soon", "retry-after": format_datetime(NOW + timedelta(minutes=2), usegmt=True)}, 120),
        ({"retry-after": format_datetime(NOW + timedelta(minutes=2), usegmt=True)}, 120),
        ({"retry-after": format_datetime(NOW - timedelta(minutes=2), usegmt=True)}, 1),
        ({"retry-after": "1e9"}, MAX_RETRY_AFTER_SECONDS),
        ({"retry-after": "inf"}, DEFAULT_RETRY_AFTER_SECONDS),
        ({"retry-after": "nan"}, DEFAULT_RETRY_AFTER_SECONDS),
        ({"retry-after": "soon"}, DEFAULT_RETRY_AFTER_SECONDS),
        ({"retry-after": ""}, DEFAULT_RETRY_AFTER_SECONDS),
        ({}, DEFAULT_RETRY_AFTER_SECONDS),
    ],
)
def test_retry_after_is_whole_seconds_from_a_number_or_a_date(headers, seconds):
    assert retry_after(headers, now=NOW) == seconds


@pytest.mark.parametrize("header", ["inf", "Wed, 21 Oct 2099 07:28:00 GMT", "later"])
async def test_every_model_429_answers_with_a_usable_retry_after(api: Api, openai_env: OpenAIServer, monkeypatch, header):
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "0")
    openai_env.behaviour.error = "rate_limit"
    openai_env.behaviour.retry_after = header
    for answer in (await api.suggest(), await api.generate({"prompt": "A lighthouse"})):
        assert answer.status == 429 and answer.json()["code"] == "rate_limited"
        assert 1 <= int(answer.headers["Retry-After"]) <= MAX_RETRY_AFTER_SECONDS
        assert answer.headers["Access-Control-Expose-Headers"] == "Retry-After"  # readable cross-origin


async def test_a_short_wait_is_sat_out_by_the_sdks_retries(api: Api, openai_env: OpenAIServer, monkeypatch):
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "2")
    openai_env.behaviour.error = "rate_limit"
    openai_env.behaviour.retry_after = "0.2"
    answer = await api.generate({"prompt": "A lighthouse"})
    assert answer.status == 429
    assert len(openai_env.model_calls()) == 3  # the first try and both retries


@pytest.mark.parametrize("header", ["21", "100"])  # over MAX_WAIT_WITHIN_REQUEST_SECONDS
async def test_a_429_asking_for_a_long_wait_is_passed_on_at_once(
    api: Api, openai_env: OpenAIServer, monkeypatch, container, header
):
    # The SDK alone sits out a Retry-After of up to two minutes at each retry: the request
    # would end in a 504 after minutes, in place of a 429 that says how long to wait.
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "2")
    openai_env.behaviour.error = "rate_limit"
    openai_env.behaviour.retry_after = header
    async with asyncio.timeout(10):
        answers = [await api.suggest(), await api.generate({"prompt": "A lighthouse"})]
    for answer in answers:
        assert (answer.status, answer.json()["code"]) == (429, "rate_limited"), answer.body
        assert answer.headers["Retry-After"] == header
    assert len(openai_env.model_calls()) == 2  # one each, no retries
    assert await blob_names(container) == []


async def test_a_long_wait_is_passed_on_at_once_when_its_retry_after_ms_is_unreadable(
    api: Api, openai_env: OpenAIServer, monkeypatch
):
    # The SDK then waits out the Retry-After in seconds: so must our judgement of its length.
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "2")
    openai_env.behaviour.error = "rate_limit"
    openai_env.behaviour.retry_after, openai_env.behaviour.retry_after_ms = "21", "soon"
    async with asyncio.timeout(10):
        answer = await api.suggest()
    assert (answer.status, answer.headers["Retry-After"]) == (429, "21")
    assert len(openai_env.model_calls()) == 1


@pytest.mark.parametrize(
    "error", ["insufficient_quota", "credit_balance_exhausted", "billing_not_active", "billing_hard_limit_reached"]
)
async def test_an_account_out_of_credit_is_not_retried(api: Api, openai_env: OpenAIServer, monkeypatch, error):
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "2")
    openai_env.behaviour.error = error
    openai_env.behaviour.retry_after = "1"
    answer = await api.generate({"prompt": "A lighthouse"})
    assert (answer.status, answer.json()["code"]) == (502, "upstream_error")
    assert "quota" in answer.json()["error"]
    assert len(openai_env.model_calls()) == 1  # no wait mends it: the SDK made no retries


async def test_a_5xx_asking_for_a_long_wait_is_a_502_at_once_not_a_504_after_minutes(
    api: Api, openai_env: OpenAIServer, monkeypatch
):
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "2")
    openai_env.behaviour.error = "overloaded"
    openai_env.behaviour.retry_after = "60"
    async with asyncio.timeout(10):
        answer = await api.generate({"prompt": "A lighthouse"})
    assert (answer.status, answer.json()["code"]) == (502, "upstream_error")
    assert len(openai_env.model_calls()) == 1


@pytest.mark.parametrize(
    "error", ["invalid_size", "invalid_size_via_litellm", "invalid_size_via_fastapi"]
)
async def test_a_request_the_model_refuses_as_made_does_not_say_try_again(api: Api, openai_env: OpenAIServer, error):
    openai_env.behaviour.error = error  # a size in VISIONARY_IMAGE_SIZES the model does not take
    answer = await api.generate({"prompt": "A lighthouse"})
    assert (answer.status, answer.json()["code"]) == (502, "upstream_error")
    assert "image model and size settings" in answer.json()["error"] and "try again" not in answer.json()["error"]


async def test_a_chat_request_the_model_refuses_as_made_names_the_suggestion_model(api: Api, openai_env: OpenAIServer):
    openai_env.behaviour.error = "unsupported_parameter"  # an older model behind VISIONARY_SUGGESTION_MODEL
    answer = await api.suggest()
    assert (answer.status, answer.json()["code"]) == (502, "upstream_error")
    assert "suggestion model settings" in answer.json()["error"] and "size" not in answer.json()["error"]
    assert len(openai_env.model_calls()) == 1  # a refusal of a field not sent is not asked again


async def test_a_picture_azures_output_filter_took_out_is_a_refusal(api: Api, azure_env: OpenAIServer, container):
    # Microsoft's documented answer when the generated image, not the prompt, is filtered: a 200.
    filtered = {"created": 1700000000, "data": [{"error": {
        "code": "contentFilter", "message": "Generated image was filtered as a result of our safety system."}}]}
    azure_env.behaviour.raw_answer = (json.dumps(filtered), "application/json")
    answer = await api.generate({"prompt": "A lighthouse"})
    assert (answer.status, answer.json()["code"]) == (400, "content_policy_violation")
    assert await blob_names(container) == []


async def test_a_picture_azures_output_filter_took_out_is_a_refusal_in_its_current_shape_too(
    api: Api, azure_env: OpenAIServer, container
):
    # Microsoft's how-to for DALL-E 3 and GPT-image shows the error in place of the data, not in an item.
    filtered = {"created": 1698435368, "error": {
        "code": "contentFilter", "message": "Generated image was filtered as a result of our safety system."}}
    azure_env.behaviour.raw_answer = (json.dumps(filtered), "application/json")
    answer = await api.generate({"prompt": "A lighthouse"})
    assert (answer.status, answer.json()["code"]) == (400, "content_policy_violation"), answer.body
    assert await blob_names(container) == []


async def test_an_account_out_of_quota_is_not_told_to_retry(
    api: Api, openai_env: OpenAIServer, monkeypatch, container, caplog
):
    # OpenAI answers 429 both for a rate and for an account with no credit left; only a rate passes.
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "0")
    openai_env.behaviour.error = "insufficient_quota"
    for answer in (await api.suggest(), await api.generate({"prompt": "A lighthouse"})):
        assert (answer.status, answer.json()["code"]) == (502, "upstream_error"), answer.body
        assert "quota" in answer.json()["error"] and "Retry-After" not in answer.headers
    assert "insufficient_quota" in caplog.text
    assert await blob_names(container) == []


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("OPENAI_API_KEY", OPENAI_KEY + "\u200b"),  # a zero-width space pasted with it
        ("OPENAI_API_KEY", OPENAI_KEY + "\nX-Injected: 1"),
        ("OPENAI_BASE_URL", "http://user:p4ssw0rd@127.0.0.1:9/v1"),
        ("OPENAI_BASE_URL", "http://[::1/v1"),
        ("OPENAI_BASE_URL", "http://127.0.0.1:port/v1"),
    ],
)
async def test_a_model_setting_no_client_can_use_is_named_not_a_500(
    api: Api, openai_env: OpenAIServer, monkeypatch, setting, value
):
    monkeypatch.setenv(setting, value)
    for answer in (await api.suggest(), await api.generate({"prompt": "A lighthouse"})):
        assert (answer.status, answer.json()["code"]) == (503, "not_configured"), answer.body
        assert setting in answer.json()["error"]
        assert value not in answer.body.decode() and "p4ssw0rd" not in answer.body.decode()
    assert openai_env.model_calls() == []


async def test_an_azure_key_no_client_can_use_is_named(api: Api, azure_env: OpenAIServer, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", AZURE_KEY + "\u00e9")
    answer = await api.generate({"prompt": "A lighthouse"})
    assert (answer.status, answer.json()["code"]) == (503, "not_configured")
    assert "AZURE_OPENAI_API_KEY" in answer.json()["error"]


async def test_a_failed_azure_sign_in_is_the_model_services_error_not_storages(
    api: Api, azure_env: OpenAIServer, container, monkeypatch
):
    monkeypatch.delenv("AZURE_OPENAI_API_KEY")
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{azure_env.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-header-the-identity-endpoint-wants")
    for answer in (await api.suggest(), await api.generate({"prompt": "A lighthouse"})):
        assert answer.status == 502, answer.body
        assert answer.json()["code"] == "upstream_error"
        assert "managed identity" in answer.json()["error"]
    assert azure_env.model_calls() == []
    assert await blob_names(container) == []


async def test_a_model_service_nobody_answers_at_is_unreachable_not_slow(api: Api, openai_env, monkeypatch, container):
    # The SDK's aiohttp transport reports a refused connection as a timeout; a user must not be
    # told to wait and retry when the endpoint setting is wrong or the service is down.
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    for answer in (await api.suggest(), await api.generate({"prompt": "A lighthouse"})):
        assert answer.status == 502, answer.body
        assert answer.json()["code"] == "upstream_error"
        assert "could not be reached" in answer.json()["error"]
    assert await blob_names(container) == []


async def test_a_model_that_answers_too_late_is_still_a_timeout(api: Api, openai_env: OpenAIServer, monkeypatch):
    monkeypatch.setenv("VISIONARY_MODEL_TIMEOUT_SECONDS", "0.3")
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "0")
    openai_env.behaviour.delay = 2
    answer = await api.suggest()
    assert answer.status == 504 and answer.json()["code"] == "upstream_timeout"


@pytest.mark.parametrize(
    "raw_answer",
    [
        ("<!doctype html><title>Bad gateway</title>", "text/html"),
        ("upstream overloaded", "application/json"),  # not JSON, though it says so
        ('{"data": [{"b64_json": "iVBOR', "application/json"),  # cut short
        ('{"created": ' + "1" * 5000 + ', "data": [], "choices": []}', "application/json"),  # past int() digits
        ("null", "application/json"),
        ("[]", "application/json"),
        ('{"data": "x", "choices": "x"}', "application/json"),
        ('{"data": {}, "choices": {}}', "application/json"),
        ("[" * 100_000 + "]" * 100_000, "application/json"),  # deeper than Python's stack
        ('{"data": [12], "choices": [12]}', "application/json"),
        ('{"data": [{"b64_json": 12}], "choices": [{"message": {"content": 12}}]}', "application/json"),
    ],
)
async def test_an_answer_that_breaks_the_protocol_is_the_model_services_error(
    api: Api, openai_env: OpenAIServer, container, raw_answer
):
    openai_env.behaviour.raw_answer = raw_answer
    for answer in (await api.suggest(), await api.generate({"prompt": "A lighthouse"})):
        assert (answer.status, answer.json()["code"]) == (502, "upstream_error"), answer.body
    assert await blob_names(container) == []


async def test_a_blank_base_url_setting_means_openai_itself(monkeypatch):
    # An app setting left blank (local.settings.example.json has one): the SDK, left to read
    # the variable itself, took "" as its base URL and every call failed as unreachable.
    monkeypatch.setenv("OPENAI_BASE_URL", "")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("VISIONARY_PROVIDER", "openai")
    service = open_service(Settings.from_env().require_models())
    try:
        assert str(service.client.base_url) == "https://api.openai.com/v1/"
    finally:
        await service.close()


def test_a_model_answer_is_read_whatever_json_allows():
    assert parse_json(b'{"data": [{"b64_json": "iVBORw0KGgo="}]}') == {"data": [{"b64_json": "iVBORw0KGgo="}]}
    # Lone surrogates are JSON, which pydantic-core refuses: the standard library reads them.
    assert parse_json(b'{"data": [{"revised_prompt": "a \\ud800 b"}]}') == {"data": [{"revised_prompt": "a \ud800 b"}]}
    for unreadable in (b"<!doctype html><title>Bad gateway</title>", b'{"n": ' + b"1" * 5000 + b"}", b"\xff\xfe"):
        with pytest.raises(ApiError) as raised:
            parse_json(unreadable)
        assert (raised.value.status, raised.value.code) == (502, "upstream_error")


@pytest.mark.parametrize("error", list(BROKEN_ERRORS))
async def test_an_error_answer_whose_body_breaks_is_the_model_services_error_not_ours(
    api: Api, openai_env: OpenAIServer, container, caplog, error
):
    # The SDK reads the last attempt's error body itself, and lets its transport's error out as it is.
    openai_env.behaviour.error = error
    for answer in (await api.suggest(), await api.generate({"prompt": "A lighthouse"})):
        assert (answer.status, answer.json()["code"]) == (502, "upstream_error"), answer.body
        assert answer.json()["error"] == (
            "The model service sent an answer that could not be decoded."
            if error.startswith("bad_gzip")
            else "The model service's answer was cut off; try again."
        )
    assert "Traceback" not in caplog.text
    # A 500 is retried as any 500 is, whatever its body: the SDK closes it unread.
    attempts = 2 if BROKEN_ERRORS[error] == 500 else 1
    assert len(openai_env.model_calls()) == 2 * attempts
    assert await blob_names(container) == []


@pytest.mark.parametrize("error", ["endless_error", "endless_error_400"])
async def test_an_error_answer_without_end_is_refused_at_its_cap_not_read_whole(
    api: Api, openai_env: OpenAIServer, monkeypatch, container, error
):
    # The SDK reads an error's body whole: a compatible server's must not fill our memory either.
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "0")
    buffers = 16 * 1024 * 1024  # what the two sockets may hold when the app hangs up
    openai_env.behaviour.error = error
    for answer in (await api.suggest(), await api.generate({"prompt": "A lighthouse"})):
        assert (answer.status, answer.json()["code"]) == (502, "upstream_error"), answer.body
        assert answer.json()["error"] == "The model service answered with an error too large to read."
        assert openai_env.sent < MAX_ERROR_ANSWER_BYTES + buffers
    assert await blob_names(container) == []
