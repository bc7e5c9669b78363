"""What every endpoint shares: reading requests, shaping answers and errors, one log line each.

`@endpoint` wraps a handler of `function_app.py`: an `ApiError` becomes its JSON
answer, a storage outage becomes 503 `storage_unavailable`, anything else a
logged 500 with no detail in the body. Each request logs one line with its
outcome; the handler adds what it knows (model, blob, prompt) with `note()`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

import azure.functions as func
from azure.core.exceptions import AzureError

from visionary import naming
from visionary.errors import ApiError
from visionary.settings import MAX_PAGE_SIZE, whole_number
from visionary.storage import describe_failure

log = logging.getLogger("visionary")

# These libraries log request URLs (blob names carry prompts; image links from a
# model can carry a SAS) or request bodies at INFO and DEBUG. Only their warnings
# reach the Functions host's logs.
for _chatty in ("azure.core.pipeline.policies.http_logging_policy", "openai", "httpx", "httpx2", "httpcore"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

JSON = "application/json"
# Every answer is for this request alone: pages and tokens carry SAS links that expire, and a
# suggestion is new each time. A cache in front of the app (a CDN, a proxy) must keep none.
NOT_STORED = {"Cache-Control": "no-store"}
Handler = Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]
MAX_LOGGED_PROMPT = 80


@dataclass
class Outcome:
    """What one request's log line says beyond function, status and time."""

    fields: dict[str, str] = field(default_factory=dict)


_outcome: ContextVar[Outcome] = ContextVar("visionary_outcome")


def note(**fields: str | None) -> None:
    """Add fields to this request's log line. Prompt text is cut to 80 characters,
    in a blob name too, so no long prompt is ever logged whole."""
    outcome = _outcome.get(None)
    if outcome is None:
        return
    for key, value in fields.items():
        if value is not None:
            outcome.fields[key] = _for_log(_cut_prompt(key, value))


def _cut_prompt(key: str, value: str) -> str:
    if key == "prompt":
        return value[:MAX_LOGGED_PROMPT]
    if key == "blob" and (name := naming.parse_gallery_name(value)):
        return naming.BlobName(name.title[:MAX_LOGGED_PROMPT], name.ts, name.ext).blob
    return value


def endpoint(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapper(req: func.HttpRequest) -> func.HttpResponse:
        started = time.perf_counter()
        outcome = Outcome()
        token = _outcome.set(outcome)
        failure: ApiError | None = None
        try:
            response = await handler(req)
        except ApiError as error:
            failure = error
        except (AzureError, TimeoutError) as error:
            log.warning("%s: %s", handler.__name__, describe_failure(error))
            failure = ApiError.storage_unavailable()
        except Exception:
            log.exception("%s: unexpected failure", handler.__name__)
            failure = ApiError.internal()
        finally:
            _outcome.reset(token)
        if failure is not None:
            response = error_response(failure)
        elapsed_ms = (time.perf_counter() - started) * 1000
        extra = (f" code={failure.code}" if failure else "") + "".join(
            f" {key}={value}" for key, value in outcome.fields.items()
        )
        log.info("%s status=%d ms=%.0f%s", handler.__name__, response.status_code, elapsed_ms, extra)
        return response

    return wrapper


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, ensure_ascii=False),
        status_code=status,
        headers={**NOT_STORED, **(headers or {})},
        mimetype=JSON,
        charset="utf-8",
    )


def text_response(text: str) -> func.HttpResponse:
    return func.HttpResponse(text, headers=NOT_STORED, mimetype="text/plain", charset="utf-8")


def error_response(error: ApiError) -> func.HttpResponse:
    return json_response(error.to_json(), error.status, error.headers)


def json_body(req: func.HttpRequest, max_bytes: int) -> object:
    """The request body parsed as JSON (UTF-8, past a byte-order mark), within a size cap."""
    body = req.get_body() or b""
    if not body and "chunked" in req.headers.get("Transfer-Encoding", "").lower():
        raise ApiError.invalid_json(
            "The request body arrived empty: the Functions host passes on only a body sent with a "
            "Content-Length, not one sent in chunks (Transfer-Encoding: chunked)."
        )
    if len(body) > max_bytes:
        raise ApiError.payload_too_large(max_bytes)
    try:
        return json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nesting thousands deep
        raise ApiError.invalid_json("The request body is not valid JSON (UTF-8).") from None


def page_params(params: Mapping[str, str], default_limit: int) -> tuple[int, str | None]:
    """`limit` (1..500, default from settings) and `cursor` of a gallery page request."""
    raw_limit = params.get("limit")
    limit = default_limit if raw_limit is None else _limit(raw_limit)
    cursor = params.get("cursor")
    return limit, cursor or None


def _limit(raw: str) -> int:
    if (limit := whole_number(raw, 1, MAX_PAGE_SIZE)) is not None:
        return limit
    raise ApiError.invalid_parameter(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}.")


def _for_log(value: str) -> str:
    # One request, one line: no newlines or control characters from user text.
    text = "".join(ch if ch.isprintable() else " " for ch in value)
    return json.dumps(text, ensure_ascii=False) if " " in text or not text else text
