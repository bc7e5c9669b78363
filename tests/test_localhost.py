import asyncio
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import azure.functions as func
import httpx
import pytest

from tests.azurite import ROOT, Azurite, free_port, stop_process, wait_until_listening
from tests.conftest import start_local_host
from tests.openai_server import OpenAIServer
from tests.served import APP_SETTINGS, NO_LOCAL_SETTINGS, ROOT_ENV, ServedApp
from visionary.localhost import MAX_BODY_BYTES, HostConfig, HostConfigError, routes_of


async def test_the_node_frontends_calls_work_in_lower_case(http: httpx.AsyncClient, offline_env):
    created = await http.post("/api/generateimage", json={"prompt": "Cat in space, watercolor"})
    assert created.status_code == 201
    first = (await http.get("/api/getimages")).json()["imageUrls"][0]
    assert first["blob"] == created.json()["blob"]
    suggestion = await http.get("/api/getchatgptsuggestion")
    assert suggestion.status_code == 200
    assert suggestion.headers["content-type"] == "text/plain; charset=utf-8"
    assert suggestion.text.strip() and not suggestion.text.startswith("{")


async def test_sas_token_and_mixed_case_routes(http: httpx.AsyncClient, storage_env):
    for path in ("/api/sasToken", "/API/SASTOKEN", "/Api/sastoken"):
        answer = await http.get(path)
        assert answer.status_code == 200 and answer.json()["permissions"] == "r"


async def test_query_and_headers_reach_the_app_as_the_functions_host_passes_them(
    http: httpx.AsyncClient, offline_env
):
    for prompt in ("A fox", "A hare"):
        assert (await http.post("/api/generateImage", json={"prompt": prompt})).status_code == 201
    cursor = (await http.get("/api/getImages?limit=1")).json()["nextCursor"]
    # A name sent twice is one value joined with commas: never the first of them, quietly.
    assert (await http.get(f"/api/getImages?limit=1&cursor=&cursor={cursor}")).status_code == 400
    assert (await http.get("/api/getImages?limit=1&limit=x")).status_code == 400
    # An empty value is not passed at all: the default page.
    assert len((await http.get("/api/getImages?limit=&cursor=")).json()["imageUrls"]) == 2
    doubled = await http.post("/api/generateImage", json={"prompt": "An owl"},
                              headers=[("Idempotency-Key", "owl"), ("Idempotency-Key", "1")])
    joined = await http.post("/api/generateImage", json={"prompt": "An owl"}, headers={"Idempotency-Key": "owl,1"})
    assert doubled.status_code == joined.status_code == 201 and doubled.json()["blob"] == joined.json()["blob"]


async def test_a_wrong_method_is_405_with_allow(http: httpx.AsyncClient):
    answer = await http.delete("/api/getImages")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET"
    assert answer.json()["code"] == "method_not_allowed"
    assert (await http.get("/api/generateImage")).headers["allow"] == "POST"


async def test_a_trailing_slash_reaches_the_same_endpoint(http: httpx.AsyncClient, storage_env):
    # The Functions host routes `/api/getImages/` to getImages; a proxy that adds the slash must not break.
    for path in ("/api/getImages/", "/api/sasToken/"):
        assert (await http.get(path)).status_code == 200, path


async def test_an_unknown_route_is_404_json(http: httpx.AsyncClient):
    for path in ("/api/nothing", "/api/getImages/extra", "/nothing.html", "/../function_app.py"):
        answer = await http.get(path)
        assert answer.status_code == 404, path
        assert answer.json() == {"error": "No such endpoint.", "code": "not_found"}


@pytest.mark.parametrize(
    "path", ["/%2e%2e/function_app.py", "/..%2flocal.settings.example.json", "/web/../host.json", "/%00"]
)
async def test_the_page_files_cannot_reach_outside_web(local_host: str, path: str):
    # Sent raw: httpx and browsers would resolve the dot segments before sending.
    reader, writer = await asyncio.open_connection("127.0.0.1", urlsplit(local_host).port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 404"), answer[:100]
    assert b"import" not in answer and b"Values" not in answer and b"extensions" not in answer


@pytest.mark.parametrize(
    "request_head",
    [b"GET /api/getImages?code=FUNCKEY-SECRET&cursor=" + b"A" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     b"GET /api/getImages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer SECRET-" + b"B" * 70_000 + b"\r\n\r\n"],
    ids=["request-line", "header"],
)
async def test_a_request_too_long_to_parse_is_logged_without_its_content(local_host: str, caplog, request_head):
    reader, writer = await asyncio.open_connection("127.0.0.1", urlsplit(local_host).port)
    writer.write(request_head)
    answer = await reader.read(100)
    writer.close()
    assert answer.split(b" ")[1] == b"400"
    [record] = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert "SECRET" not in caplog.text and "LineTooLong" in record.getMessage()


@pytest.mark.parametrize("host", ["gallery.example:port", "gallery.example:99999", "\udcff"])
async def test_a_host_header_that_is_no_host_is_a_400_json(local_host: str, storage_env, caplog, host: str):
    # The Functions host's web server refuses such a request before the app; here it was a plain 500.
    reader, writer = await asyncio.open_connection("127.0.0.1", urlsplit(local_host).port)
    head = f"GET /api/getImages HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode("utf-8", "surrogateescape"))
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"] == "invalid_parameter"
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


async def test_the_hosts_body_cap_is_a_413_json(http: httpx.AsyncClient):
    answer = await http.post("/api/generateImage", content=b"x" * (MAX_BODY_BYTES + 1))
    assert answer.status_code == 413
    assert answer.json()["code"] == "payload_too_large"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_a_compressed_body_is_passed_on_as_sent_and_answered_in_json(
    http: httpx.AsyncClient, offline_env, encoding
):
    # As on Azure: the Functions host does not inflate request bodies, so this is not JSON.
    body = gzip.compress(b'{"prompt": "A lighthouse"}')
    answer = await http.post("/api/generateImage", content=body, headers={"Content-Encoding": encoding})
    assert answer.status_code == 400
    assert answer.json()["code"] == "invalid_json"


async def test_a_body_sent_in_chunks_arrives_empty_as_on_the_functions_host(http: httpx.AsyncClient, offline_env):
    # The Functions host passes a body on only when it has a Content-Length (a streamed fetch, or a
    # proxy that streams, sends one in chunks): the app says so, here as on Azure.
    async def in_chunks():
        yield b'{"prompt": '
        yield b'"A lighthouse"}'

    chunked = await http.post("/api/generateImage", content=in_chunks())
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert chunked.status_code == 400 and chunked.json()["code"] == "invalid_json"
    assert "Content-Length" in chunked.json()["error"]
    whole = await http.post("/api/generateImage", content=b'{"prompt": "A lighthouse"}')
    assert whole.status_code == 201


async def test_cors_star_answers_preflight_and_requests(http: httpx.AsyncClient, storage_env):
    preflight = await http.options(
        "/api/generateImage",
        headers={"Origin": "https://gallery.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type"
    assert preflight.headers["access-control-max-age"] == "600"  # not a preflight before every call
    answer = await http.get("/api/getImages", headers={"Origin": "https://gallery.example"})
    assert answer.headers["access-control-allow-origin"] == "*"


async def test_a_client_that_leaves_mid_body_is_no_error_of_the_host(storage_env, caplog):
    host = await start_local_host(HostConfig())
    server = host.runner.server
    assert server is not None

    def send_half_and_leave() -> None:
        with socket.create_connection((urlsplit(host.url).hostname, urlsplit(host.url).port)) as client:
            client.sendall(b"POST /api/generateImage HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")

    try:
        await asyncio.to_thread(send_half_and_leave)
        async with asyncio.timeout(10):  # the host took the request and is done with its connection
            while server.requests_count == 0 or server.connections:
                await asyncio.sleep(0.01)
        assert [r for r in caplog.records if r.levelname == "ERROR"] == []
        async with httpx.AsyncClient(base_url=host.url) as http:
            assert (await http.get("/api/getImages")).status_code == 200
    finally:
        await host.runner.cleanup()


async def preflight_from(http: httpx.AsyncClient, origin: str) -> httpx.Response:
    """A browser's preflight for a generateImage call from script on `origin`."""
    return await http.options(
        "/api/generateImage", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
    )


async def test_cors_from_local_settings_allows_only_listed_origins(storage_env):
    host = await start_local_host(HostConfig(cors=("https://allowed.example",)))
    try:
        async with httpx.AsyncClient(base_url=host.url) as http:
            allowed = await http.get("/api/getImages", headers={"Origin": "https://allowed.example"})
            other = await http.get("/api/getImages", headers={"Origin": "https://other.example"})
            other_preflight = await preflight_from(http, "https://other.example")
    finally:
        await host.runner.cleanup()
    assert allowed.headers["access-control-allow-origin"] == "https://allowed.example"
    assert "access-control-allow-origin" not in other.headers
    # A cache must not hand the answer for one origin to another, allowed or not.
    assert allowed.headers["vary"] == other.headers["vary"] == other_preflight.headers["vary"] == "Origin"
    # A preflight from another origin is answered, not handled: 204 without CORS headers.
    assert other_preflight.status_code == 204
    assert not any(name.startswith("access-control-") for name in other_preflight.headers)
    assert "access-control-allow-credentials" not in allowed.headers  # only when Host.CORSCredentials says so


async def test_a_listed_origin_counts_in_any_case_as_browsers_send_it_in_lower_case(storage_env):
    host = await start_local_host(HostConfig(cors=("http://LocalHost:3000",)))
    try:
        async with httpx.AsyncClient(base_url=host.url) as http:
            preflight = await preflight_from(http, "http://localhost:3000")
    finally:
        await host.runner.cleanup()
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"


async def test_cors_credentials_are_allowed_for_listed_origins_when_local_settings_say_so(storage_env):
    host = await start_local_host(HostConfig(cors=("http://localhost:3000",), cors_credentials=True))
    try:
        async with httpx.AsyncClient(base_url=host.url) as http:
            preflight = await preflight_from(http, "http://localhost:3000")
            answer = await http.get("/api/getImages", headers={"Origin": "http://localhost:3000"})
            other = await http.get("/api/getImages", headers={"Origin": "https://other.example"})
    finally:
        await host.runner.cleanup()
    for allowed in (preflight, answer):
        assert allowed.headers["access-control-allow-credentials"] == "true"
        assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert not any(name.startswith("access-control-") for name in other.headers)


async def test_the_page_and_the_api_description_are_served(http: httpx.AsyncClient):
    page = await http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "VisionaryAI" in page.text
    assert (await http.get("/app.js")).headers["content-type"] == "text/javascript; charset=utf-8"
    # An edited page or script is fetched again, not taken from the browser's cache.
    assert page.headers["cache-control"] == "no-cache"
    posted = await http.post("/")  # the files are read, never written to
    assert posted.status_code == 404 and posted.json()["code"] == "not_found"
    spec = await http.get("/openapi.yaml")
    assert spec.status_code == 200 and "openapi: 3.1" in spec.text


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"Values": {"OPENAI_API_KEY": "sk-',  "local.settings.json is not valid JSON"),
        ('["not", "an", "object"]', "local.settings.json must hold a JSON object"),
        ('{"Host": {"CORS": ["*"]}}', '"Host.CORS" and "routePrefix" are strings'),
        ('{"Host": {"CORSCredentials": "yes"}}', '"Host.CORSCredentials" in local.settings.json must be true or'),
        ('{"Host": {"CORS": "*", "CORSCredentials": true}}', 'needs the allowed origins listed in "Host.CORS"'),
    ],
)
def test_a_local_settings_file_the_host_cannot_read_is_named(tmp_path, text: str, said: str):
    (tmp_path / "local.settings.json").write_text(text)
    with pytest.raises(HostConfigError) as error:
        HostConfig.load(tmp_path)
    assert said in str(error.value)
    assert "sk-" not in str(error.value)  # the file holds keys: its text is never quoted


def test_host_json_and_local_settings_are_read(tmp_path, monkeypatch):
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0", "extensions": {"http": {"routePrefix": "v2"}}}))
    (tmp_path / "local.settings.json").write_text(json.dumps({
        "IsEncrypted": False,
        "Values": {"VISIONARY_CONTAINER": "from-file", "VISIONARY_PAGE_SIZE": "7", "OPENAI_API_KEY": ""},
        "Host": {"CORS": "https://a.example, https://b.example", "LocalHttpPort": "7080"},
    }))
    config = HostConfig.load(tmp_path)
    assert (config.route_prefix, config.port) == ("v2", 7080)
    assert config.cors == ("https://a.example", "https://b.example")
    environ = {"VISIONARY_PAGE_SIZE": "9"}
    config.apply_values(environ)
    assert environ == {"VISIONARY_PAGE_SIZE": "9", "VISIONARY_CONTAINER": "from-file"}  # the environment wins


def test_a_settings_file_saved_with_a_byte_order_mark_and_a_padded_port_is_read(tmp_path):
    # As Notepad and Visual Studio save it on Windows; the Functions host reads both.
    text = json.dumps({"Values": {"VISIONARY_PAGE_SIZE": "7"}, "Host": {"LocalHttpPort": " 7080 "}})
    (tmp_path / "local.settings.json").write_bytes("\ufeff".encode() + text.encode())
    config = HostConfig.load(tmp_path)
    assert (config.port, config.values) == (7080, {"VISIONARY_PAGE_SIZE": "7"})


def test_the_settings_file_can_name_the_port_and_be_another_file(tmp_path, azurite: Azurite):
    port = free_port()
    settings = tmp_path / "staging.settings.json"
    settings.write_text(json.dumps({
        "Values": {"VISIONARY_STORAGE_CONNECTION_STRING": azurite.connection_string, "VISIONARY_PROVIDER": "offline"},
        "Host": {"LocalHttpPort": port},
    }))
    process = subprocess.Popen(
        [sys.executable, "-m", "visionary", "serve", "--settings", str(settings)],
        cwd=ROOT, env=ROOT_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_listening(process, port)
        assert httpx.get(f"http://127.0.0.1:{port}/api/getImages").status_code == 200
    finally:
        stop_process(process, signal.SIGINT)


@pytest.mark.parametrize(
    ("port", "said"),
    [("many", "must be a port number"), (0, "must be a port number"), (True, "must be a port number"),
     ("\u00b2", "must be a port number"), ("\u0663", "must be a port number"), ("9" * 5000, "must be a port number")],
)
def test_a_local_http_port_that_is_no_port_is_named(tmp_path, port, said: str):
    (tmp_path / "local.settings.json").write_text(json.dumps({"Host": {"LocalHttpPort": port}}))
    with pytest.raises(HostConfigError) as error:
        HostConfig.load(tmp_path)
    assert said in str(error.value)


@pytest.mark.parametrize("port", ["0", "70000", "\u0663", "\u00b2", "port"])
def test_a_port_on_the_command_line_is_checked_as_the_settings_files_is(port: str):
    result = subprocess.run(
        [sys.executable, "-m", "visionary", "serve", "--port", port],
        cwd=ROOT, env=ROOT_ENV, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert f"argument --port: {port!r} is not a port (1 to 65535)" in result.stderr


def test_a_settings_file_that_cannot_be_read_is_named(tmp_path):
    (tmp_path / "local.settings.json").mkdir()
    with pytest.raises(HostConfigError) as error:
        HostConfig.load(tmp_path)
    assert str(error.value) == f"{tmp_path / 'local.settings.json'} cannot be read: Is a directory."


def test_a_settings_file_named_on_the_command_line_must_exist(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "visionary", "serve", "--settings", str(tmp_path / "typo.json")],
        cwd=ROOT, env=ROOT_ENV, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert f"The settings file {tmp_path / 'typo.json'} does not exist, or is not a file." in result.stderr


def test_a_fifth_trigger_appears_by_itself():
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="images/{id}", methods=["DELETE"])
    async def deleteImage(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(req.route_params["id"])

    [route] = routes_of(app.get_functions(), "api")
    assert route.methods == ("DELETE",)
    assert route.match("/API/Images/abc") == {"id": "abc"}
    assert route.match("/api/images") is None


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")
async def test_serve_listens_on_an_ipv6_address(tmp_path, storage_env):
    port = free_port()
    output = tmp_path / "serve.log"
    command = [sys.executable, "-m", "visionary", "serve", "--host", "::1", "--port", str(port),
               *NO_LOCAL_SETTINGS]
    env = {**ROOT_ENV, "VISIONARY_STORAGE_CONNECTION_STRING": storage_env.connection_string}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output.open("w"), stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(base_url=f"http://[::1]:{port}") as http:
            for _ in range(300):  # until it listens, or has stopped
                if process.poll() is not None:
                    break
                try:
                    answer = await http.get("/api/getImages")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.1)
        assert process.poll() is None, output.read_text()
        assert answer.status_code == 200
    finally:
        stop_process(process, signal.SIGINT)
    assert f"VisionaryAI on http://[::1]:{port} " in output.read_text()


def test_a_port_in_use_is_one_line_naming_it():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        command = [sys.executable, "-m", "visionary", "serve", "--port", str(port), *NO_LOCAL_SETTINGS]
        ran = subprocess.run(command, cwd=ROOT, env=ROOT_ENV, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines() == [
        f"Port {port} on 127.0.0.1 is already in use: stop what is using it, or choose another port "
        f"(make run ARGS='--port {port + 1}', or --port with python -m visionary)."
    ]


async def test_serve_reports_a_mistyped_provider_instead_of_drawing_offline(azurite: Azurite):
    env = {**ROOT_ENV, "VISIONARY_STORAGE_CONNECTION_STRING": azurite.connection_string,
           "VISIONARY_PROVIDER": "opneai", "VISIONARY_REQUEST_DEADLINE_SECONDS": "20"}
    served = ServedApp.start(free_port(), env)
    try:
        async with httpx.AsyncClient(base_url=served.url) as http:
            answer = await http.get("/api/getChatGPTSuggestion")
    finally:
        output = served.stop()
    assert answer.status_code == 503 and answer.json()["code"] == "not_configured"
    assert "VISIONARY_PROVIDER" in answer.json()["error"]
    assert "Setting to fix: VISIONARY_PROVIDER" in output and "OFFLINE" not in output
    # Well formed, but too short for generateImage's storage steps: named at start-up too.
    assert "Setting to fix: VISIONARY_REQUEST_DEADLINE_SECONDS must be more than 3 times" in output


async def test_a_second_ctrl_c_stops_at_once_in_one_line(openai_env: OpenAIServer):
    # The first Ctrl-C waits for a picture that may take minutes; an impatient second one
    # printed pages of tracebacks from aiohttp's interrupted shutdown and exited 1.
    openai_env.behaviour.delay = 60
    env = {**ROOT_ENV, **{name: os.environ[name] for name in os.environ if name.startswith(APP_SETTINGS)}}
    served = ServedApp.start(free_port(), env)
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        drawing = asyncio.create_task(http.post("/api/generateImage", json={"prompt": "A slow lighthouse"}))
        while not openai_env.model_calls():
            await asyncio.sleep(0.05)
        served.process.send_signal(signal.SIGINT)
        while "Stopping: finishing" not in served.read():
            await asyncio.sleep(0.05)
        served.process.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(served.process.wait, 15) == 0
        with pytest.raises(httpx.RemoteProtocolError):  # dropped, as asked
            await drawing
    output = served.read()
    assert "Traceback" not in output and "ERROR" not in output, output
    assert "Stopping now: the 1 request under way is dropped." in output


def test_serve_names_a_mistyped_setting_name_and_the_one_it_meant(tmp_path, azurite: Azurite):
    # A cap set as VISIONARY_MAX_IMAGE_PER_DAY caps nothing: start-up said nothing of it.
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"Values": {"VISIONARY_MAX_IMAGE_PER_DAY": "50", "VISIONARY_PROVIDER": "offline",
                                               "VISIONARY_STORAGE_CONNECTION_STRING": azurite.connection_string}}))
    port = free_port()
    output = tmp_path / "serve.log"
    process = subprocess.Popen([sys.executable, "-m", "visionary", "serve", "--port", str(port), "--settings",
                                str(settings)], cwd=ROOT, env=ROOT_ENV, stdout=output.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_until_listening(process, port)
    finally:
        stop_process(process, signal.SIGINT)
    assert ("  Setting to fix: VISIONARY_MAX_IMAGE_PER_DAY is not a setting of this app and has no effect: "
            "did you mean VISIONARY_MAX_IMAGES_PER_DAY?") in output.read_text().splitlines()


@pytest.mark.parametrize(
    ("connection_string", "said"),
    [("UseDevelopmentStorage=false; SECRET", "The storage connection string (VISIONARY_STORAGE_CONNECTION_STRING or "
      "AzureWebJobsStorage) is malformed."),
     ("AccountName=devstoreaccount1;AccountKey=SECRET-KEY;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1",
      "The storage account key is not valid base64: check the accountKey setting or the key in the storage "
      "connection string.")],
)
def test_serve_names_a_connection_string_storage_cannot_use_at_start_up(connection_string: str, said: str):
    # Every storage request answers 503 naming it; start-up, which the README says names each, said nothing.
    env = {**ROOT_ENV, "VISIONARY_STORAGE_CONNECTION_STRING": connection_string, "VISIONARY_PROVIDER": "offline"}
    output = ServedApp.start(free_port(), env).stop()
    assert f"  Setting to fix: {said}" in output.splitlines()
    assert "SECRET" not in output


def development_stack(port: int, azurite_port: int, data: Path, settings: str = NO_LOCAL_SETTINGS[1]) -> list[str]:
    """`make run` (`python -m visionary run`) with its Azurite on `azurite_port`, as a command."""
    return [sys.executable, "-c", (
        "import sys; from pathlib import Path; from visionary.__main__ import run_stack; "
        "from visionary.localhost import HostConfig; "
        f"sys.exit(run_stack(HostConfig.load(settings=Path({settings!r})), '127.0.0.1', {port}, "
        f"{azurite_port}, Path({str(data)!r})))"
    )]


async def test_the_development_stack_stores_where_the_settings_file_says(tmp_path, azurite: Azurite):
    # A Functions project's local.settings.json often points AzureWebJobsStorage at an account.
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"Values": {"AzureWebJobsStorage": azurite.connection_string,
                                               "VISIONARY_PROVIDER": "offline"}}))
    port = free_port()
    process = subprocess.Popen(development_stack(port, free_port(), tmp_path / "azurite", str(settings)),
                               cwd=ROOT, env=ROOT_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_listening(process, port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            container_url = (await http.get("/api/sasToken")).json()["containerUrl"]
    finally:
        stop_process(process)
    assert container_url.startswith(f"http://127.0.0.1:{azurite.port}/")  # not the stack's own Azurite


def test_the_development_stack_with_azurites_port_taken_says_to_serve_alone(tmp_path):
    # An Azurite already running (from VS Code, say): a second one could not listen, silently.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        azurite_port = holder.getsockname()[1]
        command = development_stack(free_port(), azurite_port, tmp_path / "data")
        ran = subprocess.run(command, cwd=ROOT, env=ROOT_ENV, capture_output=True, text=True, timeout=30)
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines() == [
        f"Port {azurite_port}, Azurite's, is already in use. If an Azurite is running there, serve the app "
        "alone against it: .venv/bin/python -m visionary serve"
    ]


def test_make_run_started_twice_says_where_the_first_one_is(tmp_path):
    # Told to serve the app alone against the running Azurite, the user met the app's port taken next.
    with socket.socket() as azurite, socket.socket() as app:
        for holder in (azurite, app):
            holder.bind(("127.0.0.1", 0))
            holder.listen()
        azurite_port, port = azurite.getsockname()[1], app.getsockname()[1]
        command = development_stack(port, azurite_port, tmp_path / "data")
        ran = subprocess.run(command, cwd=ROOT, env=ROOT_ENV, capture_output=True, text=True, timeout=30)
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines() == [
        f"Ports {azurite_port} (Azurite's) and {port} are already in use: if make run is running in another "
        f"terminal, the app is at http://127.0.0.1:{port}; else stop what holds them."
    ]


OLD_PYTHON = Path.home() / ".pyenv" / "versions" / "3.10.13" / "bin" / "python3"  # as Ubuntu 22.04's python3


@pytest.mark.skipif(not OLD_PYTHON.exists(), reason="no Python 3.10 on this machine")
def test_make_run_with_a_python_too_old_says_which_it_needs_before_making_the_venv(tmp_path):
    # pip failed on a pin after a minute, with a page of versions and no word of Python's.
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    ran = subprocess.run(["make", "run", f"PYTHON={OLD_PYTHON}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode != 0
    assert ran.stderr.splitlines()[0] == (
        f"VisionaryAI needs Python 3.11, 3.12 or 3.13; {OLD_PYTHON} is 3.10. Name another: make run PYTHON=python3.12"
    )
    assert not (tmp_path / ".venv").exists()


def test_the_development_stack_without_azurite_installed_says_so(tmp_path):
    # python -m visionary run in a project where npm ci (or make run) has not run yet.
    for part in ("visionary", "function_app.py", "host.json"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        copy(ROOT / part, tmp_path / part)
    command = [sys.executable, "-m", "visionary", "run", "--port", str(free_port()), *NO_LOCAL_SETTINGS]
    ran = subprocess.run(command, cwd=tmp_path, env=ROOT_ENV, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines() == [
        "Azurite is not installed (node_modules/.bin/azurite-blob is missing): "
        "make run installs it, or run npm ci first."
    ]


async def test_ctrl_c_on_the_development_stack_keeps_the_pictures_just_stored(tmp_path):
    # Ctrl-C signals the terminal's whole process group. Azurite in it began closing at once,
    # died at the stack's own signal mid-close, and lost the last seconds (it saves every 5 s).
    port, azurite = free_port(), Azurite(free_port())  # not started: the stack starts its own
    env = {**ROOT_ENV, "VISIONARY_PROVIDER": "offline"}  # no storage named: the stack's Azurite, on its port

    async def in_a_terminal(work) -> None:
        output = tmp_path / "stack.log"
        process = subprocess.Popen(development_stack(port, azurite.port, tmp_path / "azurite"), cwd=ROOT, env=env,
                                   start_new_session=True, stdout=output.open("w"), stderr=subprocess.STDOUT)
        try:
            wait_until_listening(process, port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                await work(http)
            os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C does
            assert process.wait(timeout=30) == 0
            assert "Stopping: finishing the requests under way" in output.read_text()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)

    async def store_three(http: httpx.AsyncClient) -> None:
        for i in range(3):
            assert (await http.post("/api/generateImage", json={"prompt": f"Kept {i}"})).status_code == 201
        await asyncio.sleep(1)  # within Azurite's 5 s between saves

    listed: list[str] = []

    async def list_them(http: httpx.AsyncClient) -> None:
        listed.extend(image["prompt"] for image in (await http.get("/api/getImages")).json()["imageUrls"])

    await in_a_terminal(store_three)
    await in_a_terminal(list_them)
    assert listed == ["Kept 2", "Kept 1", "Kept 0"]
