from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
import httpx
import pytest
from aiohttp import web
from azure.storage.blob.aio import BlobServiceClient, ContainerClient
from PIL import Image

import function_app
from tests.azurite import Azurite, free_port
from tests.lossy_storage import LossyStorage
from tests.openai_server import OpenAIServer
from tests.served import APP_SETTINGS, ROOT_ENV, ServedApp
from visionary import clients
from visionary.localhost import HostConfig, LocalHost
from visionary.settings import Settings
from visionary.storage import Gallery


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    server = Azurite(free_port()).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(APP_SETTINGS):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session", autouse=True)
async def close_cached_clients() -> AsyncIterator[None]:
    yield
    await clients.close_all()


@pytest.fixture
def container_name() -> str:
    return f"test-{uuid.uuid4().hex[:20]}"


@pytest.fixture
def storage_env(azurite: Azurite, container_name: str, monkeypatch: pytest.MonkeyPatch) -> Azurite:
    """The app's storage settings pointed at Azurite and a container of this test's own."""
    monkeypatch.setenv("VISIONARY_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.setenv("VISIONARY_CONTAINER", container_name)
    return azurite


@pytest.fixture
async def container(storage_env: Azurite, container_name: str) -> AsyncIterator[ContainerClient]:
    """A direct client on the test's container, to look behind the API's back."""
    service = BlobServiceClient.from_connection_string(storage_env.connection_string)
    async with service:
        yield service.get_container_client(container_name)


@pytest.fixture
async def gallery(storage_env: Azurite) -> AsyncIterator[Gallery]:
    """The app's own gallery client on the test's container, to fill it or read it."""
    gallery = Gallery.from_settings(Settings.from_env().require_storage())
    yield gallery
    await gallery.close()


@pytest.fixture
async def lossy_storage(azurite: Azurite, container_name: str, monkeypatch) -> AsyncIterator[LossyStorage]:
    """Azurite behind a proxy that loses the answers it is told to, as the app's storage."""
    storage = await LossyStorage(azurite).start()
    monkeypatch.setenv("VISIONARY_STORAGE_CONNECTION_STRING", storage.connection_string)
    monkeypatch.setenv("VISIONARY_CONTAINER", container_name)
    yield storage
    await storage.stop()


@pytest.fixture(scope="session")
async def _model_server() -> AsyncIterator[OpenAIServer]:
    server = await OpenAIServer().start()
    yield server
    await server.stop()


@pytest.fixture
def model_server(_model_server: OpenAIServer) -> OpenAIServer:
    """The loopback OpenAI-protocol server, with a fresh behaviour and call log for this test."""
    _model_server.reset(image=png_bytes(42, size=32))
    return _model_server


OPENAI_KEY = "sk-test-0123456789abcdefSECRET"
AZURE_KEY = "azure-test-key-0123456789SECRET"


@pytest.fixture
def offline_env(storage_env: Azurite, monkeypatch: pytest.MonkeyPatch) -> Azurite:
    """The app drawing and suggesting with the offline provider, on Azurite."""
    monkeypatch.setenv("VISIONARY_PROVIDER", "offline")
    return storage_env


@pytest.fixture
def openai_env(model_server: OpenAIServer, storage_env: Azurite, monkeypatch: pytest.MonkeyPatch) -> OpenAIServer:
    """The app pointed at the loopback server as an OpenAI-compatible service, and at Azurite."""
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{model_server.url}/v1")
    monkeypatch.setenv("VISIONARY_MODEL_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "1")
    return model_server


@pytest.fixture
def azure_env(model_server: OpenAIServer, storage_env: Azurite, monkeypatch: pytest.MonkeyPatch) -> OpenAIServer:
    """The app pointed at the loopback server as Azure OpenAI (with a key), and at Azurite."""
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", model_server.url)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", AZURE_KEY)
    monkeypatch.setenv("OPENAI_API_VERSION", "2025-04-01-preview")
    monkeypatch.setenv("AZURE_OPENAI_IMAGE_DEPLOYMENT", "gallery-images")
    monkeypatch.setenv("AZURE_OPENAI_CHAT_DEPLOYMENT", "gallery-chat")
    monkeypatch.setenv("VISIONARY_MODEL_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("VISIONARY_MODEL_MAX_RETRIES", "1")
    return model_server


async def blob_names(container: ContainerClient, prefix: str | None = None) -> list[str]:
    """What the container holds, seen behind the API's back (nothing while it does not exist)."""
    if not await container.exists():
        return []
    return [blob.name async for blob in container.list_blobs(name_starts_with=prefix)]


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> bool:
    """Whether `check` comes true within `within` seconds: a test waits for what it expects,
    as soon as it happens, and as long as a slow machine needs, not for a fixed time."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def png_bytes(seed: int = 0, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (seed % 256, (seed * 7) % 256, 99)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        assert self.headers.get("Content-Type", "").startswith("application/json"), self.headers
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@functools.cache
def registered_functions() -> dict[str, object]:
    # FunctionApp.get_functions() indexes the app and may run once per process, as on the host.
    return {f.get_function_name(): f for f in function_app.app.get_functions()}


class Api:
    """Calls the registered handlers of function_app with real func.HttpRequest objects."""

    def __init__(self) -> None:
        self.functions = registered_functions()

    async def call(
        self,
        function: str,
        method: str = "GET",
        query: str = "",
        body: bytes | str | object = b"",
        headers: dict[str, str] | None = None,
    ) -> Response:
        trigger = self.functions[function].get_trigger()
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        url = f"http://localhost:7071/api/{trigger.route}" + (f"?{query}" if query else "")
        request = func.HttpRequest(
            method=method,
            url=url,
            headers=headers or {},
            params=dict(parse_qsl(urlsplit(url).query, keep_blank_values=True)),
            route_params={},
            body=body,
        )
        response = await self.functions[function].get_user_function()(request)
        headers = dict(response.headers)
        if response.mimetype:
            headers["Content-Type"] = response.mimetype + (f"; charset={response.charset}" if response.charset else "")
        return Response(response.status_code, headers, response.get_body())

    async def get_images(self, query: str = "") -> Response:
        return await self.call("getImages", query=query)

    async def generate(self, body: object, headers: dict[str, str] | None = None) -> Response:
        return await self.call("generateImage", "POST", body=body, headers=headers)

    async def suggest(self) -> Response:
        return await self.call("getChatGPTSuggestion")


@pytest.fixture
def api() -> Api:
    return Api()


@pytest.fixture(scope="module")
def served_app(azurite: Azurite) -> Iterator[ServedApp]:
    """`python -m visionary serve` in its own process: offline provider, a container of its own."""
    env = {
        **ROOT_ENV,
        "VISIONARY_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "VISIONARY_CONTAINER": f"served-{uuid.uuid4().hex[:16]}",
        "VISIONARY_PROVIDER": "offline",
    }
    app = ServedApp.start(free_port(), env)
    yield app
    app.stop()


@dataclass
class RunningHost:
    url: str
    runner: web.AppRunner


async def start_local_host(config: HostConfig) -> RunningHost:
    """The local host, serving the registered functions on a free loopback port."""
    runner = web.AppRunner(LocalHost(registered_functions().values(), config).application(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return RunningHost(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", runner)


@pytest.fixture
async def local_host() -> AsyncIterator[str]:
    """The base URL of a local host with the default configuration (prefix api, CORS *)."""
    host = await start_local_host(HostConfig())
    yield host.url
    await host.runner.cleanup()


@pytest.fixture
async def http(local_host: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the local host, as a browser or curl would call it."""
    async with httpx.AsyncClient(base_url=local_host, timeout=30) as client:
        yield client
