"""Clients for the model services, and what their failures mean to our callers.

OpenAI, Azure OpenAI and any OpenAI-compatible server speak the same protocol
through the openai SDK; only the client differs. This module is imported on
first use only (it pulls in openai), never when the app starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, TypedDict, TypeVar

import aiohttp
import httpx2
import openai
import pydantic_core
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError

from visionary.errors import ApiError
from visionary.identity import azure_credential
from visionary.settings import ModelSettings, whole_number

log = logging.getLogger("visionary")

AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
# Passed always: given None, the SDK reads OPENAI_BASE_URL itself, and an empty one (as in
# local.settings.example.json, or an app setting left blank) would be its base URL.
OPENAI_BASE_URL = "https://api.openai.com/v1"
# When a model's 429 names no usable wait, or an absurd one: what our callers are told.
DEFAULT_RETRY_AFTER_SECONDS = 10
MAX_RETRY_AFTER_SECONDS = 24 * 60 * 60
# The longest wait a 429 may ask for that the SDK sits out within a request. The SDK alone
# would sit out up to two minutes at each retry, and the request would end in a 504 after
# minutes; a longer wait goes to our caller at once, as a 429 with the service's Retry-After.
MAX_WAIT_WITHIN_REQUEST_SECONDS = 20
# An error answer's body, as sent: OpenAI's are a few hundred bytes, a proxy's HTML page a few
# thousand. The SDK alone would read any whole.
MAX_ERROR_ANSWER_BYTES = 32 * 1024
RETRIED_STATUSES = (408, 409, 429)  # and 5xx: what the SDK retries
# OpenAI's types and codes for an account or project out of credit, over its spend limit, or
# with billing not active (429s; billing_hard_limit_reached is a 400): no wait mends them.
OUT_OF_CREDIT = (
    "insufficient_quota",
    "credit_balance_exhausted",
    "organization_spend_limit_exceeded",
    "project_spend_limit_exceeded",
    "organization_usage_limit_exceeded",
    "billing_not_active",
    "billing_hard_limit_reached",
)
T = TypeVar("T")
# What reading an answer's fields can raise: the SDK does not validate answers, so a
# compatible server's any JSON (or HTML) reaches its callers as it came.
MALFORMED_ANSWER = (AttributeError, TypeError, IndexError, KeyError)
# A refused prompt's error codes, as compared (lower case, no underscores): OpenAI's, gpt-image's,
# and Azure OpenAI's (content_filter for chat, contentFilter for images).
REFUSALS = ("contentpolicyviolation", "moderationblocked", "contentfilter")
# A refusal in words, for a 400 whose code says nothing: null (OpenAI's images API until 2023, and
# gateways relaying it) or the bare status (LiteLLM's proxy). OpenAI's safety system, Azure
# OpenAI's content management policy, LiteLLM's ContentPolicyViolationError.
_REFUSAL_WORDS = re.compile(r"safety system|content management policy|ContentPolicyViolationError", re.IGNORECASE)
_ERROR_CODE = re.compile(r"\d{3}|[A-Za-z][A-Za-z_]{0,39}")


@dataclass
class ModelService:
    """An SDK client for the configured service, with the credential it signs in with."""

    client: openai.AsyncOpenAI
    credential: AsyncTokenCredential | None = None  # the managed identity's, keyless Azure only

    async def close(self) -> None:
        await self.client.close()
        if self.credential is not None:
            await self.credential.close()


class _ClientOptions(TypedDict):
    """What the SDK client is made with, whichever service it speaks to."""

    timeout: float
    max_retries: int
    http_client: openai.DefaultAioHttpClient


class _AzureClientOptions(_ClientOptions):
    """Those, and where Azure OpenAI is and which API version it speaks."""

    azure_endpoint: str
    api_version: str


def open_service(settings: ModelSettings) -> ModelService:
    """One SDK client for the configured service (OpenAI or Azure OpenAI)."""
    # On aiohttp, the HTTP stack the storage SDK already runs (image links alone are fetched
    # with httpx, `images.download`): megabytes of base64 read faster than through httpx2.
    common = _ClientOptions(
        timeout=settings.timeout_seconds,
        max_retries=settings.max_retries,
        http_client=openai.DefaultAioHttpClient(
            timeout=settings.timeout_seconds,
            event_hooks={"response": [_error_body_capped, _no_retry_unless_a_short_wait_mends]},
        ),
    )
    if settings.provider != "azure":
        # A compatible server may need no key at all; the SDK insists on one.
        client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key or "not-needed",
            base_url=settings.openai_base_url or OPENAI_BASE_URL,
            **common,
        )
        return ModelService(client)
    if settings.azure_endpoint is None:  # Settings.require_models() names the missing setting first
        raise ValueError("Azure OpenAI needs its endpoint")
    azure = _AzureClientOptions(
        azure_endpoint=settings.azure_endpoint, api_version=settings.api_version, **common
    )
    if settings.azure_api_key:
        return ModelService(openai.AsyncAzureOpenAI(api_key=settings.azure_api_key, **azure))
    from azure.identity.aio import get_bearer_token_provider

    credential = azure_credential(settings.identity)
    token_provider = get_bearer_token_provider(credential, AZURE_SCOPE)
    return ModelService(openai.AsyncAzureOpenAI(azure_ad_token_provider=token_provider, **azure), credential)


async def _error_body_capped(response: httpx2.Response) -> None:
    """Cap an error answer's body for whoever reads it: the SDK reads the last attempt's whole
    (and closes a retried one unread), and our hook below reads a 429's."""
    if response.status_code >= 400 and isinstance(response.stream, httpx2.AsyncByteStream):
        response.stream = _CappedErrorBody(response.stream, response.headers.get("content-length"))


class _CappedErrorBody(httpx2.AsyncByteStream):
    """An error answer's body, read no further than MAX_ERROR_ANSWER_BYTES (as sent)."""

    def __init__(self, stream: httpx2.AsyncByteStream, declared: str | None) -> None:
        self._stream = stream
        self._declared = declared

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield await capped_body(self._stream, self._declared, MAX_ERROR_ANSWER_BYTES, _error_too_large)

    async def aclose(self) -> None:
        await self._stream.aclose()


def _error_too_large() -> ApiError:
    return ApiError.upstream_error("The model service answered with an error too large to read.")


async def _no_retry_unless_a_short_wait_mends(response: httpx2.Response) -> None:
    """Keep the SDK from retrying an answer whose `Retry-After` is long (a 429, a 503), or a
    429 no wait mends (an account out of credit): our caller hears at once, not after
    minutes of retries that end in a 504.

    The SDK's public switch is the service's own `x-should-retry` header, which it obeys.
    """
    status = response.status_code
    if status not in RETRIED_STATUSES and status < 500:
        return
    if retry_after(response.headers) > MAX_WAIT_WITHIN_REQUEST_SECONDS or (
        status == 429 and _out_of_credit(await _json_of(response))
    ):
        response.headers["x-should-retry"] = "false"


async def _json_of(response: httpx2.Response) -> object:
    try:
        return json.loads(await response.aread())
    except (ValueError, RecursionError):
        return None


def _out_of_credit(body: object) -> bool:
    """Whether an error body (OpenAI's shape, or its inner error) says the account has no credit
    left: its type or its code is one of OUT_OF_CREDIT."""
    error = _inner_error(body)
    return error is not None and (error.get("type") in OUT_OF_CREDIT or error.get("code") in OUT_OF_CREDIT)


def credentials_hint(client: openai.AsyncOpenAI) -> str:
    """What signs the client's requests in, to check when the service refuses them (401, 403):
    the Cognitive Services role exists on Azure OpenAI alone."""
    if isinstance(client, openai.AsyncAzureOpenAI):
        return "AZURE_OPENAI_API_KEY, or without a key, the app identity's Cognitive Services OpenAI User role"
    return "OPENAI_API_KEY"


async def call_model(
    call: Callable[[], Awaitable[T]],
    deadline: float,
    settings_hint: str,
    credentials: str,
    refused: Callable[[], ApiError] = ApiError.content_policy_violation,
) -> T:
    """Run a model call (with what depends on it, such as downloading its picture) within
    `deadline` seconds, turning its failures into the API's errors.

    The SDK has already made its bounded retries (429, 5xx, timeouts) by the time
    an exception reaches here. `refused` is the error for a content-policy refusal:
    the caller knows whether its user wrote the prompt. `settings_hint` names the settings
    that make the request, for a 400 no retry mends; `credentials` what signs it in
    (`credentials_hint`), for a 401 or 403.
    """
    try:
        async with asyncio.timeout(deadline):
            return await call()
    except openai.APITimeoutError as error:
        if failure := _connection_failure(error):
            log.warning("model service unreachable: %s", type(failure).__name__)
            raise ApiError.upstream_error(
                "The model service could not be reached; check its endpoint setting."
            ) from None
        raise ApiError.upstream_timeout() from None
    except TimeoutError:
        raise ApiError.upstream_timeout() from None
    except (httpx2.TransportError, httpx2.DecodingError) as error:
        # A body that broke as it was read: an answer's (`json_answer`), or an error answer's,
        # which the SDK reads after its retries and lets out as its transport raised it.
        raise _broken_body(error) from None
    except openai.RateLimitError as error:
        if _out_of_credit(error.body):  # OpenAI's 429 for an account out of credit: no wait helps
            raise _upstream(error, settings_hint, credentials) from None
        raise ApiError.rate_limited(
            "The model service is rate limiting requests; try again later.", retry_after(error.response.headers)
        ) from None
    except openai.BadRequestError as error:
        if _refused(error):
            raise refused() from None
        raise _upstream(error, settings_hint, credentials) from None
    except openai.APIStatusError as error:
        raise _upstream(error, settings_hint, credentials) from None
    except ClientAuthenticationError as error:
        # Keyless Azure OpenAI: the app's identity got no token (none assigned, or the
        # identity endpoint failed). An azure-core error, but not a storage outage.
        log.warning("model sign-in failed: %s", type(error).__name__)
        raise ApiError.upstream_error(
            "The app could not sign in to Azure OpenAI with its managed identity; "
            "check the identity and its Cognitive Services OpenAI User role, or set AZURE_OPENAI_API_KEY."
        ) from None
    except (openai.APIConnectionError, openai.APIResponseValidationError) as error:
        log.warning("model call failed: %s", type(error).__name__)
        raise ApiError.upstream_error() from None


def _broken_body(error: httpx2.TransportError | httpx2.DecodingError) -> ApiError:
    if isinstance(error, httpx2.DecodingError):  # a gzip (deflate, br, zstd) body that does not decode
        log.warning("model answer undecodable")
        return ApiError.upstream_error("The model service sent an answer that could not be decoded.")
    if isinstance(error, httpx2.TimeoutException) and not _connection_failure(error):
        return ApiError.upstream_timeout()
    log.warning("model answer cut off: %s", type(error).__name__)
    return ApiError.upstream_error("The model service's answer was cut off; try again.")


def is_refusal(code: object) -> bool:
    """Whether an error code says the prompt or the picture was refused by a content policy."""
    return isinstance(code, str) and code.replace("_", "").lower() in REFUSALS


def _refused(error: openai.BadRequestError) -> bool:
    """Whether a 400 refuses the prompt: by its code, or by its message when its code says nothing."""
    code = _code(error)
    if code is not None and not code.isdigit():
        return is_refusal(code)
    inner = _inner_error(error.body)  # no code, or only the HTTP status again
    message = inner.get("message") if inner is not None else None
    return isinstance(message, str) and _REFUSAL_WORDS.search(message) is not None


async def json_answer(
    request: AbstractAsyncContextManager[openai.AsyncAPIResponse[Any]],
    max_bytes: int,
    too_large: Callable[[], ApiError],
) -> Any:
    """The model's JSON answer to a streaming-response call, read as it arrives.

    Read no further than `max_bytes`: any server can be a compatible one, and an answer of
    gigabytes must not fill the process's memory (the SDK alone reads every answer whole).
    The SDK has made its retries by the time the body is read: a body cut off is not retried.
    `call_model` tells the caller what a read that broke means.
    """
    async with request as answer:
        body = await capped_body(answer.iter_bytes(), answer.headers.get("content-length"), max_bytes, too_large)
    return parse_json(body)


async def capped_body(
    chunks: AsyncIterable[bytes], declared: str | None, max_bytes: int, too_large: Callable[[], ApiError]
) -> bytes:
    """A response body from its chunks, refused (`too_large`) at a declared length or a read over
    `max_bytes`, whichever shows first."""
    length = whole_number(declared, 0, 2**63) if declared else None  # unreadable: the count below decides
    if length is not None and length > max_bytes:
        raise too_large()
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise too_large()
        parts.append(chunk)
    return b"".join(parts)


def parse_json(body: bytes) -> Any:
    """A model's JSON answer, parsed by pydantic-core (the SDK's own models stand on it).

    The SDK parses with `json.loads`: 2 ms of a 2 MB answer, on the event loop, where
    pydantic-core takes 0.25 ms. It refuses lone surrogates, which JSON allows and
    `json.loads` keeps (model text is cleaned of them later); only such answers take it.
    Whatever neither reads (not JSON, not UTF-8, nested too deep, a number of 5,000 digits)
    is the model service's error. Parsed here rather than by the SDK, so that a ValueError
    anywhere else is ours: a 500 with its traceback, not hidden as the model's.
    """
    try:
        return pydantic_core.from_json(body)
    except ValueError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:
        log.warning("model answer unreadable: %s", type(error).__name__)
        raise ApiError.upstream_error("The model service sent an answer that is not JSON.") from None


def _connection_failure(error: Exception) -> aiohttp.ClientConnectionError | None:
    """The refused or dropped connection that the SDK's aiohttp transport reported as a timeout.

    It maps every `aiohttp.ClientConnectionError` to `httpx.ConnectTimeout`; only aiohttp's
    own timeouts (subclasses of `TimeoutError`) really ran out of time.
    """
    cause = error.__cause__
    while cause is not None and not isinstance(cause, aiohttp.ClientError):
        cause = cause.__cause__
    if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(cause, TimeoutError):
        return cause
    return None


def _upstream(error: openai.APIStatusError, settings_hint: str, credentials: str) -> ApiError:
    log.warning("model service answered %d (%s)", error.status_code, _loggable(_code(error)))
    if _out_of_credit(error.body):
        return ApiError.upstream_error(
            "The model service account has run out of quota; its owner must check its plan and billing."
        )
    if error.status_code in (401, 403):
        return ApiError.upstream_error(
            f"The model service refused our credentials; check {credentials}."
        )
    if error.status_code == 404:
        return ApiError.upstream_error("The model service does not know the configured model or deployment.")
    if error.status_code in (400, 422):  # the request as the settings make it: trying again will not help
        return ApiError.upstream_error(
            f"The model service refused the request as the app makes it; check the {settings_hint} settings."
        )
    return ApiError.upstream_error()


def _loggable(code: str | None) -> str:
    # The service's text: logged only if it looks like a code (content_filter, 429,
    # DeploymentNotFound), so a gateway's code cannot forge a log line or echo a key.
    if code is None:
        return "no code"
    return code if _ERROR_CODE.fullmatch(code) else "an unrecognised code"


def _code(error: openai.APIStatusError) -> str | None:
    if error.code:
        return str(error.code)
    inner = _inner_error(error.body)
    return str(inner["code"]) if inner is not None and inner.get("code") else None


def _inner_error(body: object) -> dict | None:
    """The error of an error body, OpenAI's shape (`{"error": {...}}`) or a bare one."""
    inner = body.get("error", body) if isinstance(body, dict) else None
    return inner if isinstance(inner, dict) else None


def retry_after(headers: Mapping[str, str], now: datetime | None = None) -> int:
    """Whole seconds to wait, from a 429's `retry-after-ms` or `retry-after` (seconds or an HTTP date).

    Always an answer, between 1 s and a day: the API promises a Retry-After with every 429.
    Read as the SDK reads them (a `retry-after-ms` that is no number gives way to `retry-after`),
    since the SDK waits out what it reads.
    """
    if (ms := _number(headers.get("retry-after-ms"))) is not None:
        seconds: float | None = ms / 1000
    elif value := headers.get("retry-after"):
        seconds = _number(value)
        if seconds is None:
            seconds = _seconds_until(value, now or datetime.now(timezone.utc))
    else:
        seconds = None
    if seconds is None or not math.isfinite(seconds):
        return DEFAULT_RETRY_AFTER_SECONDS
    return min(max(1, math.ceil(seconds)), MAX_RETRY_AFTER_SECONDS)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _seconds_until(http_date: str, now: datetime) -> float | None:
    try:
        return (parsedate_to_datetime(http_date) - now).total_seconds()
    except (ValueError, TypeError):  # not a date (or a date without a zone)
        return None
