"""A loopback server that speaks the OpenAI wire protocol, for tests and benchmarks.

It answers what the openai SDK sends to OpenAI (`/v1/images/generations`,
`/v1/chat/completions`) and to Azure OpenAI
(`/openai/deployments/{deployment}/...?api-version=...`), with answers and error
bodies shaped as those services send them. It also serves image files (for the
`url` answer shape) and an App Service managed-identity token endpoint. Each
request is recorded; `behaviour` says how to answer the next ones.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from tests.identity import access_token


class WholeBody(dict):
    """An error answer's body sent as it is, not as OpenAI's {"error": {...}}."""


IMAGE_ERRORS = {
    "content_policy": (
        400,
        {
            "message": "Your request was rejected as a result of our safety system.",
            "type": "invalid_request_error",
            "param": None,
            "code": "content_policy_violation",
        },
    ),
    "moderation_blocked": (  # gpt-image models
        400,
        {
            "message": "Your request was rejected by the safety system. If you believe this is an error, "
            "contact us at help.openai.com and include the request ID req_0123456789abcdef.",
            "type": "image_generation_user_error",
            "param": None,
            "code": "moderation_blocked",
        },
    ),
    "content_filter": (  # Azure OpenAI's content filtering
        400,
        {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
            "management policy. Please modify your prompt and retry.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation",
                           "content_filter_result": {"violence": {"filtered": True, "severity": "high"}}},
        },
    ),
    "content_filter_image": (  # Azure OpenAI's image generation, as Microsoft documents it: camelCase
        400,
        {"code": "contentFilter", "message": "Your task failed as a result of our safety system."},
    ),
    "content_policy_code_null": (  # OpenAI's images API until 2023; gateways relaying it still send it so
        400,
        {
            "code": None,
            "message": "Your request was rejected as a result of our safety system. ",
            "param": None,
            "type": "invalid_request_error",
        },
    ),
    "content_policy_via_litellm": (  # LiteLLM's proxy: its code is the HTTP status, its class in the message
        400,
        {
            "message": "litellm.BadRequestError: litellm.ContentPolicyViolationError: "
            "litellm.ContentPolicyViolationError: AzureException - The response was filtered due to the prompt "
            "triggering Azure OpenAI's content management policy. Please modify your prompt and retry.\n"
            "model=azure/gpt-image-1. content_policy_fallback=None. fallbacks=None.",
            "type": None,
            "param": None,
            "code": "400",
            "provider_specific_fields": {
                "innererror": {"code": "ResponsibleAIPolicyViolation",
                               "content_filter_result": {"violence": {"filtered": True, "severity": "high"}}},
            },
        },
    ),
    "invalid_size_via_litellm": (  # the same proxy, for a request the settings make: no refusal
        400,
        {
            "message": "litellm.BadRequestError: OpenAIException - Invalid value: '640x480'. Supported values "
            "are: '1024x1024', '1024x1536', '1536x1024', and 'auto'.",
            "type": None,
            "param": None,
            "code": "400",
        },
    ),
    "invalid_size_via_fastapi": (  # a compatible server on FastAPI: its own 422 body
        422,
        WholeBody({
            "detail": [
                {
                    "type": "literal_error",
                    "loc": ["body", "size"],
                    "msg": "Input should be '256x256', '512x512' or '1024x1024'",
                    "input": "640x480",
                    "ctx": {"expected": "'256x256', '512x512' or '1024x1024'"},
                }
            ]
        }),
    ),
    "rate_limit": (
        429,
        {
            "message": "Rate limit reached for images per minute. Please try again in 7s.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        },
    ),
    "insufficient_quota": (  # no credit left: OpenAI sends it as a 429 too
        429,
        {
            "message": "You exceeded your current quota, please check your plan and billing details. For more "
            "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        },
    ),
    "credit_balance_exhausted": (  # OpenAI's newer billing codes keep the type insufficient_quota
        429,
        {
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "type": "insufficient_quota",
            "param": None,
            "code": "credit_balance_exhausted",
        },
    ),
    "billing_not_active": (
        429,
        {
            "message": "Your account is not active, please check your billing details on our website.",
            "type": "billing_not_active",
            "param": None,
            "code": "billing_not_active",
        },
    ),
    "billing_hard_limit_reached": (  # a 400 from the images API at the spend limit
        400,
        {
            "message": "Billing hard limit has been reached",
            "type": "invalid_request_error",
            "param": None,
            "code": "billing_hard_limit_reached",
        },
    ),
    "overloaded": (  # answered with a retry-after, as a 429 is
        503,
        {
            "message": "The engine is currently overloaded, please try again later",
            "type": "server_error",
            "param": None,
            "code": None,
        },
    ),
    "invalid_size": (
        400,
        {
            "message": "Invalid value: '640x480'. Supported values are: '1024x1024', '1024x1536', '1536x1024', and 'auto'.",
            "type": "invalid_request_error",
            "param": "size",
            "code": "invalid_value",
        },
    ),
    "unsupported_parameter": (
        400,
        {
            "message": "Unsupported parameter: 'max_completion_tokens' is not supported with this model.",
            "type": "invalid_request_error",
            "param": "max_completion_tokens",
            "code": "unsupported_parameter",
        },
    ),
    "server_error": (
        500,
        {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": None,
        },
    ),
    "permission_denied": (  # Azure OpenAI: a token of an identity without the role to call the deployment
        401,
        {
            "code": "PermissionDenied",
            "message": "The principal `00000000-0000-0000-0000-000000000000` lacks the required data action "
            "`Microsoft.CognitiveServices/accounts/OpenAI/deployments/images/action` to perform "
            "`POST /openai/deployments/{deployment-id}/images/generations` operation.",
        },
    ),
    "unverified_organization": (  # OpenAI: gpt-image models only for organizations that verified themselves
        403,
        {
            "message": "Your organization must be verified to use the model `gpt-image-1`. Please go to: "
            "https://platform.openai.com/settings/organization/general and click on Verify Organization.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        },
    ),
    "bad_key": (
        401,
        {
            "message": "Incorrect API key provided: sk-test-*****. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        },
    ),
}


@dataclass
class Behaviour:
    """How the server answers; tests change it before making requests."""

    # or "url", "redirect" (a URL that answers 302 to the file), or "data_url": the picture inline as
    # a data: URL, as OpenedAI Images (an OpenAI-compatible front for Stable Diffusion and FLUX)
    # answers when no response_format is asked for
    shape: str = "b64_json"
    image: bytes = b""
    revised_prompt: str | None = None
    # A key of IMAGE_ERRORS, or: slow, malformed_json, truncated_b64, html_url; or a 200 whose body is
    # oversized (declared, over 28 MB), endless (chunked, with no end), cut_off (closed halfway),
    # stalled (silent after a quarter, longer than any test's timeout), or bad_gzip (marked gzip, and
    # not); a key of BROKEN_ERRORS (an error answer whose body breaks so), or
    # a key of ENDLESS_ERRORS (an error whose body never ends).
    error: str | None = None
    delay: float = 0.0  # seconds before every model answer
    file_delay: float = 0.0  # seconds before a picture behind a URL answer is served
    retry_after: str = "7"
    retry_after_ms: str | None = None  # sent beside retry-after on a 429 or 503, when set
    raw_answer: tuple[str, str] | None = None  # (body, content type): a 200 that breaks the protocol
    link: str | None = None  # the image link to answer with, as given (a broken one, say)
    suggestion: str = '"A lighthouse on a cliff at dusk, impressionism, oil painting"'
    finish_reason: str = "stop"  # or "length" (out of tokens), "content_filter" (Azure's output filter)
    # A service that refuses a chat request holding one of the two token-limit fields, as it
    # answers: a key of FIELD_REFUSALS.
    refuses: str | None = None
    # Chat content as a list of parts, as Mistral's Magistral sends it: its thinking in a part of its own.
    content_parts: list[dict] | None = None


@dataclass
class Call:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict | None


@dataclass
class OpenAIServer:
    behaviour: Behaviour = field(default_factory=Behaviour)
    calls: list[Call] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # access tokens handed out, newest last
    identity_header: str = "loopback-identity-header"
    port: int = 0  # 0: a free one
    record: bool = True  # keep a log of calls (benchmarks turn it off)
    _runner: web.AppRunner | None = None
    _ids: itertools.count = field(default_factory=itertools.count)
    _encoded: tuple[bytes | None, bytes] = (None, b"")
    sent: int = 0  # bytes of the last broken answer's body that the client took

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def model_calls(self) -> list[Call]:
        return [c for c in self.calls if c.path.endswith(("/images/generations", "/chat/completions"))]

    def reset(self, image: bytes) -> None:
        self.behaviour = Behaviour(image=image)
        self.calls.clear()

    async def start(self) -> OpenAIServer:
        app = web.Application(client_max_size=1024**2)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{deployment}/images/generations", self._azure(self._images))
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._azure(self._chat))
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/moved/{name}", self._moved)
        app.router.add_get("/msi/token", self._identity_token)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> Call:
        body = await request.json() if request.can_read_body else None
        call = Call(request.path, dict(request.query), dict(request.headers), body)
        if self.record:
            self.calls.append(call)
        return call

    def _azure(self, handler):
        async def azure(request: web.Request) -> web.StreamResponse:
            if "api-version" not in request.query:
                return _error(404, {"code": "404", "message": "Resource not found"})
            return await handler(request)

        return azure

    async def _images(self, request: web.Request) -> web.StreamResponse:
        call = await self._record(request)
        b = self.behaviour
        if b.error == "slow" or b.delay:
            await asyncio.sleep(b.delay or 10)  # longer than any test's timeout
        if b.raw_answer:
            return _raw(b.raw_answer)
        if b.error in IMAGE_ERRORS:
            status, error = IMAGE_ERRORS[b.error]
            return _error(status, error, self._retry_after(status))
        if b.error == "malformed_json":
            return web.Response(text='{"created": 1, "data": [{"b64_json": "iVBOR', content_type="application/json")
        if b.error in ("oversized", "endless", "cut_off", "stalled"):
            return await self._broken_body(request, b.error)
        if b.error in BROKEN_ERRORS:
            return await _broken_error(request, b.error)
        if b.error in ENDLESS_ERRORS:
            return await self._endless_error(request, ENDLESS_ERRORS[b.error])
        if b.error == "bad_gzip":  # says gzip, is not
            return web.Response(body=b'{"data": []}', headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        item: dict[str, str] = {}
        if b.link is not None:
            item["url"] = b.link
        elif b.shape == "data_url":
            item["url"] = "data:image/png;base64," + self._base64(b.image).decode()
        elif b.shape in ("url", "redirect") or b.error == "html_url":
            name = "page.html" if b.error == "html_url" else f"{next(self._ids)}.png"
            item["url"] = f"{self.url}/{'moved' if b.shape == 'redirect' else 'files'}/{name}"
        else:
            encoded = self._base64(b.image)
            item["b64_json"] = encoded[: len(encoded) // 2] if b.error == "truncated_b64" else encoded
        if b.revised_prompt:
            item["revised_prompt"] = b.revised_prompt
        answer: dict = {"created": int(time.time()), "data": [item]}
        if "b64_json" in item:  # a GPT Image model's answer: its settings and its usage
            answer |= {
                "background": "opaque",
                "output_format": "png",
                "quality": "medium",
                "size": (call.body or {}).get("size", "1024x1024"),
                "usage": {
                    "input_tokens": 12,
                    "input_tokens_details": {"image_tokens": 0, "text_tokens": 12},
                    "output_tokens": 1056,
                    "output_tokens_details": {"image_tokens": 1056, "text_tokens": 0},
                    "total_tokens": 1068,
                },
            }
        return web.Response(body=_json_bytes(answer), content_type="application/json")

    async def _broken_body(self, request: web.Request, error: str) -> web.StreamResponse:
        """A 200 that starts as a picture's b64_json and then is too large (30 MB, declared up
        front), never ends (chunked), or stops partway through its declared length (cut_off:
        halfway, and the connection closes; stalled: at a quarter, and nothing more comes)."""
        head, chunk, tail = b'{"created": 1, "data": [{"b64_json": "', b"A" * 1024 * 1024, b'"}]}'
        declared, written = {
            "oversized": (30, 30), "endless": (None, 200), "cut_off": (4, 2), "stalled": (4, 1)
        }[error]
        response = web.StreamResponse(headers={"content-type": "application/json"})
        if declared is not None:
            response.content_length = len(head) + declared * len(chunk) + len(tail)
        await response.prepare(request)
        await response.write(head)
        self.sent = 0
        try:
            while self.sent < written * len(chunk):
                await response.write(chunk)
                self.sent += len(chunk)
            if written == declared:
                await response.write_eof(tail)
                return response
        except ConnectionError:  # the client hung up
            return response
        if error == "stalled":
            await asyncio.sleep(10)  # longer than any test's timeout
        if request.transport is not None:
            request.transport.close()  # the rest never comes
        return response

    def _retry_after(self, status: int) -> dict[str, str]:
        if status not in (429, 503):
            return {}
        b = self.behaviour
        return {"retry-after": b.retry_after} | ({"retry-after-ms": b.retry_after_ms} if b.retry_after_ms else {})

    async def _endless_error(self, request: web.Request, status: int) -> web.StreamResponse:
        """An error whose body (chunked) goes on for 64 MB, and then never ends."""
        response = web.StreamResponse(status=status, headers={"content-type": "application/json"})
        await response.prepare(request)
        self.sent = 0
        try:
            await response.write(b'{"error": {"message": "')
            while self.sent < 64 * 1024 * 1024:
                await response.write(b"x" * 1024 * 1024)
                self.sent += 1024 * 1024
            await asyncio.sleep(10)  # longer than any test's timeout
        except ConnectionError:  # the client hung up
            pass
        return response

    def _base64(self, image: bytes) -> bytes:
        # Encoded once per picture: a model "answering at once" should cost the client, not us.
        if self._encoded[0] is not image:
            self._encoded = (image, base64.b64encode(image))
        return self._encoded[1]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        call = await self._record(request)
        b = self.behaviour
        if b.delay:
            await asyncio.sleep(b.delay)
        if b.raw_answer:
            return _raw(b.raw_answer)
        if b.error in IMAGE_ERRORS:
            status, error = IMAGE_ERRORS[b.error]
            return _error(status, error, self._retry_after(status))
        if b.error in BROKEN_ERRORS:
            return await _broken_error(request, b.error)
        if b.error in ENDLESS_ERRORS:
            return await self._endless_error(request, ENDLESS_ERRORS[b.error])
        if b.refuses and FIELD_REFUSALS[b.refuses][0] in (call.body or {}):
            _, status, body = FIELD_REFUSALS[b.refuses]
            return web.json_response(body, status=status)
        content = b.suggestion if b.content_parts is None else b.content_parts
        return web.json_response(
            {
                "id": f"chatcmpl-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": (call.body or {}).get("model", "unknown"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": b.finish_reason,
                    }
                ],
                "usage": {"prompt_tokens": 60, "completion_tokens": 20, "total_tokens": 80},
            }
        )

    async def _file(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        await asyncio.sleep(self.behaviour.file_delay)
        if request.match_info["name"].endswith(".html"):
            return web.Response(text="<!doctype html><title>Sign in</title>", content_type="text/html")
        return web.Response(body=self.behaviour.image, content_type="image/png")

    async def _moved(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        raise web.HTTPFound(f"/files/{request.match_info['name']}")

    async def _identity_token(self, request: web.Request) -> web.StreamResponse:
        """App Service's managed identity endpoint (IDENTITY_ENDPOINT, api-version 2019-08-01)."""
        await self._record(request)
        if request.headers.get("X-IDENTITY-HEADER") != self.identity_header:
            return web.json_response({"error": "invalid identity header"}, status=401)
        resource = request.query.get("resource", "")
        token, expires_on = access_token(resource)
        self.tokens.append(token)
        return web.json_response(
            {
                "access_token": token,
                "expires_on": str(expires_on),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": "00000000-0000-0000-0000-000000000000",
            }
        )


def _json_bytes(answer: dict) -> bytes:
    # json.dumps would scan the megabytes of base64 on every answer; they need no escaping.
    item = answer["data"][0]
    encoded = item.pop("b64_json", None)
    if encoded is None:
        return json.dumps(answer).encode()
    marker = uuid.uuid4().hex  # stands in for the base64, and nothing else in the answer can be it
    item["b64_json"] = marker
    head, tail = json.dumps(answer).encode().split(marker.encode())
    return b"".join((head, encoded, tail))


# A chat request refused for a field it holds, as the services answer: (the field, status, body).
FIELD_REFUSALS = {
    "openai_reasoning_model": (  # o-series and gpt-5 models take only max_completion_tokens
        "max_tokens",
        400,
        {
            "error": {
                "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "type": "invalid_request_error",
                "param": "max_tokens",
                "code": "unsupported_parameter",
            }
        },
    ),
    "mistral": (  # Mistral's API refuses any field it does not know
        "max_completion_tokens",
        422,
        {
            "object": "error",
            "message": {
                "detail": [
                    {
                        "type": "extra_forbidden",
                        "loc": ["body", "max_completion_tokens"],
                        "msg": "Extra inputs are not permitted",
                        "input": 1000,
                    }
                ]
            },
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        },
    ),
    "azure_before_2024_09": (  # Azure OpenAI's API versions before 2024-09-01-preview
        "max_completion_tokens",
        400,
        {
            "error": {
                "message": "Unrecognized request argument supplied: max_completion_tokens",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    ),
}


# Error answers whose body breaks: cut off halfway through its declared length, or marked gzip and not.
ENDLESS_ERRORS = {"endless_error": 500, "endless_error_400": 400}
BROKEN_ERRORS = {"cut_off_400": 400, "cut_off_500": 500, "bad_gzip_400": 400, "bad_gzip_500": 500}


async def _broken_error(request: web.Request, error: str) -> web.StreamResponse:
    body = json.dumps({"error": IMAGE_ERRORS["server_error"][1]}).encode()
    response = web.StreamResponse(status=BROKEN_ERRORS[error], headers={"content-type": "application/json"})
    if error.startswith("bad_gzip"):
        response.headers["Content-Encoding"] = "gzip"
        response.content_length = len(body)
        await response.prepare(request)
        await response.write_eof(body)
        return response
    response.content_length = 2 * len(body)
    await response.prepare(request)
    await response.write(body)
    if request.transport is not None:
        request.transport.close()  # the rest never comes
    return response


def _raw(answer: tuple[str, str]) -> web.Response:
    body, content_type = answer
    return web.Response(text=body, content_type=content_type)


def _error(status: int, error: dict, headers: dict[str, str] | None = None) -> web.Response:
    body = error if isinstance(error, WholeBody) else {"error": error}
    return web.json_response(body, status=status, headers=headers or {})
