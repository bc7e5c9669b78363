"""Clients for the model services, and what their failures mean to our callers.

OpenAI, Azure OpenAI and any OpenAI-compatible server speak the same protocol
through the openai SDK; only the client differs. This module is imported on
first use only (it pulls in openai), never when the app starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import openai

from visionary.errors import ApiError
from visionary.settings import ModelSettings

log = logging.getLogger("visionary")

AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
T = TypeVar("T")


@dataclass
class ModelService:
    """An SDK client for the configured service, with the credential it signs in with."""

    client: openai.AsyncOpenAI
    credential: object | None = None  # azure.identity.aio.DefaultAzureCredential, keyless Azure only

    async def close(self) -> None:
        await self.client.close()
        if self.credential is not None:
            await self.credential.close()


def open_service(settings: ModelSettings) -> ModelService:
    """One SDK client for the configured service (OpenAI or Azure OpenAI)."""
    # On aiohttp, the HTTP stack the storage SDK already runs: one connection machinery for
    # the whole app, and megabytes of base64 read a little faster than through httpx2.
    common = dict(
        timeout=settings.timeout_seconds,
        max_retries=settings.max_retries,
        http_client=openai.DefaultAioHttpClient(timeout=settings.timeout_seconds),
    )
    if settings.provider != "azure":
        # A compatible server may need no key at all; the SDK insists on one.
        client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key or "not-needed", base_url=settings.openai_base_url, **common
        )
        return ModelService(client)
    azure = dict(azure_endpoint=settings.azure_endpoint, api_version=settings.api_version, **common)
    if settings.azure_api_key:
        return ModelService(openai.AsyncAzureOpenAI(api_key=settings.azure_api_key, **azure))
    from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider

    credential = DefaultAzureCredential()
    token_provider = get_bearer_token_provider(credential, AZURE_SCOPE)
    return ModelService(openai.AsyncAzureOpenAI(azure_ad_token_provider=token_provider, **azure), credential)


async def call_model(call: Callable[[], Awaitable[T]], deadline: float | None = None) -> T:
    """Run one SDK call within `deadline` seconds, turning its failures into the API's errors.

    The SDK has already made its bounded retries (429, 5xx, timeouts) by the time
    an exception reaches here.
    """
    try:
        async with asyncio.timeout(deadline):
            return await call()
    except (openai.APITimeoutError, TimeoutError):
        raise ApiError.upstream_timeout() from None
    except openai.RateLimitError as error:
        raise ApiError.rate_limited(
            "The model service is rate limiting requests; try again later.",
            _retry_after(error.response.headers.get("retry-after")),
        ) from None
    except openai.BadRequestError as error:
        if _code(error) in ("content_policy_violation", "moderation_blocked", "content_filter"):
            raise ApiError.content_policy_violation() from None
        raise _upstream(error) from None
    except openai.APIStatusError as error:
        raise _upstream(error) from None
    except (openai.APIConnectionError, openai.APIResponseValidationError, ValueError) as error:
        # ValueError: an answer that is not JSON at all.
        log.warning("model call failed: %s", type(error).__name__)
        raise ApiError.upstream_error() from None


def _upstream(error: openai.APIStatusError) -> ApiError:
    log.warning("model service answered %d (%s)", error.status_code, _code(error) or "no code")
    if error.status_code in (401, 403):
        return ApiError.upstream_error("The model service refused our credentials; check the API key setting.")
    if error.status_code == 404:
        return ApiError.upstream_error("The model service does not know the configured model or deployment.")
    return ApiError.upstream_error()


def _code(error: openai.APIStatusError) -> str | None:
    if error.code:
        return str(error.code)
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("code"):
            return str(inner["code"])
    return None


def _retry_after(value: str | None) -> int | None:
    try:
        return max(1, round(float(value))) if value else None
    except ValueError:
        return None
