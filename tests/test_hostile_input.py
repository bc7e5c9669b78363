"""Hostile input over real HTTP: every bad request is a 4xx JSON error that stores nothing,
and prompts that look like paths, links, markup or headers are drawn and stay harmless."""

import base64
import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import httpx
import pytest
from azure.storage.blob.aio import ContainerClient

from tests.conftest import Api, png_bytes
from visionary import naming
from visionary.cursors import encode_cursor

SAS_FIELDS = {"sv", "st", "se", "sr", "sp", "sig", "spr"}


@dataclass(frozen=True)
class Bad:
    method: str
    path: str
    status: int
    code: str  # "a|b": either is right (the order of checks is the app's to choose)
    body: bytes = b""
    headers: dict[str, str | bytes] = field(default_factory=dict)
    allow: str | None = None  # the Allow header a 405 must carry


def body(payload: bytes | object, status: int = 400, code: str = "invalid_json", **headers: str | bytes) -> Bad:
    """POST generateImage with these exact bytes (or this value as JSON)."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Bad("POST", "/api/generateImage", status, code, raw, {k.replace("_", "-"): v for k, v in headers.items()})


def prompt(value: object, code: str = "invalid_prompt") -> Bad:
    return body({"prompt": value}, code=code)


def page(query: str) -> Bad:
    """GET getImages with this exact query string."""
    return Bad("GET", f"/api/getImages?{query}", 400, "invalid_parameter")


def cursor(value: str) -> Bad:
    return page(urlencode({"cursor": value}))


def ours(payload: object) -> str:
    """Our cursor's encoding (base64url JSON) around any payload: well-formed, but forged."""
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def wrong_method(method: str, path: str, allow: str) -> Bad:
    return Bad(method, path, 405, "method_not_allowed", allow=allow)


MULTIPART = (
    b"--b0undary\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n"
    b"A lighthouse at dusk\r\n--b0undary--\r\n"
)
VALID = {"prompt": "A lighthouse at dusk, oil painting"}

BAD_REQUESTS = [
    # the body is not a JSON object
    pytest.param(body(b"not json"), id="not-json"),
    pytest.param(body(b'{"prompt": "a'), id="truncated-json"),
    pytest.param(body(b""), id="empty-body"),
    pytest.param(body([VALID]), id="json-array"),
    pytest.param(body("A lighthouse"), id="json-string"),
    pytest.param(body(42), id="json-number"),
    pytest.param(body(None), id="json-null"),
    pytest.param(body(True), id="json-true"),
    pytest.param(body(b'{"prompt": "\xff\xfe a lighthouse"}'), id="invalid-utf8"),
    pytest.param(body("A lighthouse".encode("utf-16")), id="utf16-body"),
    pytest.param(body(b'{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 413, "payload_too_large"),
                 id="deep-nesting-over-64kb"),
    pytest.param(body(b'{"prompt": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", code="invalid_json|invalid_prompt"),
                 id="deep-nesting-under-64kb"),
    pytest.param(body(MULTIPART, content_type="multipart/form-data; boundary=b0undary"), id="multipart-form"),
    # prompt: missing, wrong type, blank, too long, forbidden characters
    pytest.param(body({}, code="invalid_prompt"), id="prompt-missing"),
    pytest.param(prompt(42), id="prompt-number"),
    pytest.param(prompt(None), id="prompt-null"),
    pytest.param(prompt({"text": "a lighthouse"}), id="prompt-object"),
    pytest.param(prompt(["a lighthouse"]), id="prompt-list"),
    pytest.param(prompt(True), id="prompt-bool"),
    pytest.param(body(b'{"prompt": NaN}', code="invalid_prompt"), id="prompt-nan"),
    pytest.param(prompt(""), id="prompt-empty"),
    pytest.param(prompt(" \t\n\r\u00a0\u3000 "), id="prompt-whitespace"),
    pytest.param(prompt("\u200b\ufeff\u202e \u2060"), id="prompt-zero-width-only"),
    pytest.param(prompt("x" * 4001, "prompt_too_long"), id="prompt-4001-chars"),
    pytest.param(body({"prompt": "x" * (1024 * 1024)}, 413, "payload_too_large"), id="1mb-body"),
    pytest.param(body(b"x" * (5 * 1024 * 1024), 413, "payload_too_large"), id="5mb-body"),
    pytest.param(prompt("a\u0000b"), id="prompt-nul"),
    pytest.param(prompt("bell\u0007 escape\u001b[31m"), id="prompt-c0-controls"),
    pytest.param(prompt("csi\u009b31m and \u0090 dcs"), id="prompt-c1-controls"),
    pytest.param(body(b'{"prompt": "a \\ud800 b"}', code="invalid_prompt"), id="prompt-lone-high-surrogate"),
    pytest.param(body(b'{"prompt": "a \\udfff b"}', code="invalid_prompt"), id="prompt-lone-low-surrogate"),
    # size
    pytest.param(body({**VALID, "size": "999x999"}, code="invalid_parameter"), id="size-not-allowed"),
    pytest.param(body({**VALID, "size": "1024X1024"}, code="invalid_parameter"), id="size-wrong-case"),
    pytest.param(body({**VALID, "size": 1024}, code="invalid_parameter"), id="size-number"),
    pytest.param(body({**VALID, "size": ["1024x1024"]}, code="invalid_parameter"), id="size-list"),
    pytest.param(body(b'{"prompt": "a cat", "size": "\\ud800"}', code="invalid_parameter"), id="size-surrogate"),
    # limit
    *(pytest.param(page(f"limit={value}"), id=f"limit-{name}") for name, value in [
        ("minus-1", "-1"), ("0", "0"), ("501", "501"), ("abc", "abc"), ("1e3", "1e3"), ("2.5", "2.5"),
        ("huge", "9" * 400), ("arabic-indic-digit", "%D9%A3"), ("fullwidth-digit", "%EF%BC%95"),
        ("hex", "0x10"), ("leading-space", "%205"), ("plus", "%2B5"),
    ]),
    # cursors that are not ours
    pytest.param(cursor("gallery/8236287999876_A lighthouse_1763712000123.png"), id="cursor-bare-blob-name"),
    pytest.param(cursor(ours({})), id="cursor-empty-object"),
    pytest.param(cursor(ours([1, "x"])), id="cursor-array"),
    pytest.param(cursor(ours({"v": 1, "token": ""})), id="cursor-empty-token"),
    pytest.param(cursor(ours({"v": 1, "token": 7})), id="cursor-number-token"),
    pytest.param(cursor(ours({"v": 2, "token": "x"})), id="cursor-version-2"),
    pytest.param(cursor(base64.urlsafe_b64encode(b"\xff\x00 not json").decode()), id="cursor-base64-of-bytes"),
    pytest.param(cursor("!!not*base64~~"), id="cursor-junk"),
    pytest.param(cursor("A" * 4100), id="cursor-4100-chars"),
    pytest.param(cursor("A" * 10_000), id="cursor-10000-chars"),
    # forged: our encoding around a token we never issued, without our check (Azurite would list from it)
    pytest.param(cursor(ours({"v": 1, "token": "<garbage>"})), id="cursor-forged"),
    pytest.param(cursor(ours({"v": 1, "token": "\u0000"})), id="cursor-forged-control"),
    pytest.param(cursor(ours({"v": 1, "token": "\ud800"})), id="cursor-forged-surrogate"),
    # forged with our check (it holds no secret): a token no listing makes, as no name holds a
    # non-character; storage answers such a marker with a 500 (Azurite), which is not an outage
    *(pytest.param(cursor(encode_cursor(token)), id=f"cursor-forged-checked-{token.encode('unicode_escape').decode()}")
      for token in ("\ufffe", "a\uffff", "\ufdd0", "\U0010ffff")),
    # wrong methods
    pytest.param(wrong_method("GET", "/api/generateImage", "POST"), id="get-generateImage"),
    pytest.param(wrong_method("POST", "/api/getImages", "GET"), id="post-getImages"),
    pytest.param(wrong_method("PUT", "/api/sasToken", "GET"), id="put-sasToken"),
    pytest.param(wrong_method("DELETE", "/api/getChatGPTSuggestion", "GET"), id="delete-getChatGPTSuggestion"),
    # Idempotency-Key: 1..200 printable ASCII
    pytest.param(body(VALID, code="invalid_parameter", idempotency_key="k" * 201), id="idempotency-key-201-chars"),
    pytest.param(body(VALID, code="invalid_parameter", idempotency_key="clé-1".encode()), id="idempotency-key-non-ascii"),
    pytest.param(body(VALID, code="invalid_parameter", idempotency_key="a\tb"), id="idempotency-key-tab"),
    pytest.param(body({"prompt": None}, code="invalid_prompt|invalid_parameter", idempotency_key="k" * 10_000),
                 id="idempotency-key-10000-chars-bad-body"),
]


async def container_state(container: ContainerClient) -> list[tuple[str, str]]:
    """Every blob with its ETag; a container that does not exist is empty."""
    if not await container.exists():
        return []
    return [(blob.name, blob.etag) async for blob in container.list_blobs()]


def assert_error_shape(answer: httpx.Response) -> dict:
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    assert answer.headers["content-type"] == "application/json; charset=utf-8", answer.text[:300]
    error = answer.json()
    assert set(error) == {"error", "code"}, error
    assert isinstance(error["error"], str) and error["error"].strip(), error
    assert isinstance(error["code"], str) and re.fullmatch(r"[a-z]+(_[a-z]+)*", error["code"]), error
    return error


@pytest.mark.parametrize("bad", BAD_REQUESTS)
async def test_a_bad_request_is_a_4xx_json_error_and_changes_nothing(
    bad: Bad, http: httpx.AsyncClient, offline_env, container: ContainerClient
):
    # One picture in the gallery: a cursor then reaches storage, and "unchanged" means something.
    await container.create_container()
    await container.upload_blob(naming.name_for("seed", 1763712000123).blob, png_bytes())
    before = await container_state(container)

    answer = await http.request(bad.method, bad.path, content=bad.body, headers=bad.headers)

    error = assert_error_shape(answer)
    assert answer.status_code == bad.status and error["code"] in bad.code.split("|"), error
    if bad.allow:
        assert answer.headers["allow"] == bad.allow
    assert await container_state(container) == before


async def test_an_idempotency_key_with_control_characters_is_refused_by_the_handler(api: Api, offline_env, container):
    # HTTP clients and servers refuse these bytes in a header (aiohttp and Kestrel answer 400
    # themselves); the handler still refuses a key that carries them.
    for key in ("a\nb", "a\r\nSet-Cookie: x=y", "a\x7fb", "a\x00b"):
        answer = await api.generate(VALID, headers={"Idempotency-Key": key})
        assert (answer.status, answer.json()["code"]) == (400, "invalid_parameter")
    assert await container_state(container) == []


async def test_a_json_body_sent_as_text_plain_is_accepted(http: httpx.AsyncClient, offline_env):
    # Browsers send text/plain without a CORS preflight; the app reads the body whatever its type.
    answer = await http.post(
        "/api/generateImage", content=json.dumps(VALID).encode(), headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["prompt"] == VALID["prompt"]


async def test_a_json_body_that_starts_with_a_byte_order_mark_is_accepted(http: httpx.AsyncClient, offline_env):
    # Some .NET and PowerShell clients write one; the Node version (and JSON.parse after a
    # decoder) read past it, so its frontends' callers must not start failing.
    answer = await http.post("/api/generateImage", content=b"\xef\xbb\xbf" + json.dumps(VALID).encode())
    assert answer.status_code == 201, answer.text
    assert answer.json()["prompt"] == VALID["prompt"]


LOOKALIKE_PROMPTS = [
    "../../etc/passwd",
    "/gallery/../x",
    "C:\\Windows\\system32",
    "https://evil.example/?a=1&b=2#frag",
    "<script>alert(1)</script><img src=x onerror=alert(1)>",
    "Header: x\r\nSet-Cookie: a=b",
    "%2e%2e%2f",
    "?sig=forged&sp=rwdl",
]


@pytest.mark.parametrize("text", LOOKALIKE_PROMPTS)
async def test_prompts_shaped_like_paths_links_markup_or_headers_are_drawn_and_harmless(
    text: str, http: httpx.AsyncClient, offline_env, container: ContainerClient
):
    answer = await http.post("/api/generateImage", content=json.dumps({"prompt": f"  {text} "}).encode())
    assert answer.status_code == 201, answer.text
    assert "set-cookie" not in answer.headers
    created = answer.json()
    assert created["prompt"] == text

    # stored directly under gallery/, one name, nothing to split a header or a log line
    [stored] = [blob async for blob in container.list_blobs(include=["metadata"])]
    assert stored.name == created["blob"]
    assert stored.name.startswith(naming.PREFIX) and stored.name.count("/") == 1
    metadata = stored.metadata
    assert not any(ch in value for value in (stored.name, *metadata.values()) for ch in "\r\n")
    assert metadata["prompt"].isascii() and unquote(metadata["prompt"]) == text

    # the link's path is the blob, its query is the read-only SAS and nothing else
    link = urlsplit(created["url"])
    container_path = urlsplit((await http.get("/api/sasToken")).json()["containerUrl"]).path
    assert unquote(link.path) == f"{container_path}/{stored.name}"
    assert link.fragment == ""
    query = parse_qs(link.query)
    assert set(query) <= SAS_FIELDS and query["sp"] == ["r"] and len(query["sig"]) == 1
    async with httpx.AsyncClient() as reader:
        image = await reader.get(created["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"

    # and the gallery shows the prompt as it was typed (trimmed)
    [listed] = (await http.get("/api/getImages")).json()["imageUrls"]
    assert (listed["blob"], listed["prompt"]) == (stored.name, text)
