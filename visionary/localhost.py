"""The local host: the Functions app on aiohttp.web, for machines without Core Tools.

It does what `func start` does for an HTTP app: reads `host.json` (route prefix)
and `local.settings.json` (`Values` under the environment, `Host.CORS`), takes
its route table from `function_app.app.get_functions()` (a new trigger appears
by itself), matches routes case-insensitively, builds a `func.HttpRequest`, and
sends the handler's `func.HttpResponse` back as it is. It also serves the
gallery page (`web/`) at `/` and the API description at `/openapi.yaml`.
Function keys are not checked, as with `func start`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import azure.functions as func
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from azure.functions.decorators.http import HttpTrigger
from multidict import MultiMapping

from visionary.endpoints import error_response
from visionary.errors import ApiError
from visionary.settings import whole_number

log = logging.getLogger("visionary.localhost")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 7071  # the Functions host's
MAX_BODY_BYTES = 100 * 1024 * 1024  # the Functions host's limit for an HTTP request; the app's own is far lower
# aiohttp refuses request lines and header values over 8 KB itself, in plain text, before
# any handler runs; these limits let the app answer long cursors and keys with its JSON errors.
# Bodies reach the handler as sent, Content-Encoding and all, as the Functions host passes them
# (aiohttp would inflate gzip and answer a broken or brotli body with a plain-text error).
HANDLER_ARGS = {"max_line_size": 64 * 1024, "max_field_size": 64 * 1024, "auto_decompress": False}
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png",
                ".svg": "image/svg+xml", ".yaml": "application/yaml", ".ico": "image/x-icon"}


@dataclass(frozen=True)
class HostConfig:
    route_prefix: str = "api"
    cors: tuple[str, ...] = ("*",)
    values: Mapping[str, str] = field(default_factory=dict)
    port: int = DEFAULT_PORT  # Host.LocalHttpPort; --port wins
    cors_credentials: bool = False  # Host.CORSCredentials: cookies and auth headers on cross-origin calls

    @classmethod
    def load(cls, root: Path = ROOT, settings: Path | None = None) -> HostConfig:
        """host.json and local.settings.json, as `func start` reads them; HostConfigError names what is wrong.

        `settings` is another settings file in place of the project's local.settings.json;
        unlike that one, it must exist.
        """
        host = _read_json(root / "host.json")
        if settings is not None and not settings.is_file():
            raise HostConfigError(f"The settings file {settings} does not exist, or is not a file.")
        settings = settings or root / "local.settings.json"
        local = _read_json(settings)
        try:
            prefix = host.get("extensions", {}).get("http", {}).get("routePrefix", "api").strip("/")
            cors = tuple(o.strip() for o in local.get("Host", {}).get("CORS", "*").split(",") if o.strip())
            port = local.get("Host", {}).get("LocalHttpPort", DEFAULT_PORT)
            credentials = local.get("Host", {}).get("CORSCredentials", False)
            values = {k: str(v) for k, v in local.get("Values", {}).items() if v not in (None, "")}
        except AttributeError:  # a list or a number where the host wants an object or a string
            raise HostConfigError(
                f'host.json or {settings.name} does not have the shape the Functions host reads: '
                '"Values" and "Host" are objects, "Host.CORS" and "routePrefix" are strings.'
            ) from None
        # A string as the Functions host reads it too, spaces around it and all.
        if (number := port_number(port.strip() if isinstance(port, str) else port)) is None:
            raise HostConfigError(f'"Host.LocalHttpPort" in {settings.name} must be a port number (1 to 65535).')
        if not isinstance(credentials, bool):
            raise HostConfigError(f'"Host.CORSCredentials" in {settings.name} must be true or false.')
        if credentials and "*" in cors:  # browsers refuse credentials with any origin, and so does Azure
            raise HostConfigError(
                f'"Host.CORSCredentials" in {settings.name} needs the allowed origins listed in "Host.CORS", not "*".'
            )
        return cls(prefix, cors, values, number, credentials)

    def allows(self, origin: str) -> bool:
        """Whether script on `origin` may read the answers. As ASP.NET Core's CORS, which the
        Functions host runs on, the listed origins count in lower case: browsers send theirs so."""
        return "*" in self.cors or origin in (listed.lower() for listed in self.cors)

    def apply_values(self, environ: MutableMapping[str, str] = os.environ) -> None:
        """local.settings.json `Values` become settings; the environment wins."""
        for name, value in self.values.items():
            environ.setdefault(name, value)


def port_number(value: object) -> int | None:
    """A TCP port, from 1 to 65535, as a JSON number or as text; None otherwise."""
    if isinstance(value, str):
        return whole_number(value, 1, 65535)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    return None


class HostConfigError(ValueError):
    """host.json or local.settings.json cannot be read; the message says which and where."""


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as error:  # a directory, or a file this user may not read
        raise HostConfigError(f"{path} cannot be read: {error.strerror or error}.") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise HostConfigError(f"{path.name} is not valid JSON ({error}); fix it or remove it.") from None
    if not isinstance(data, dict):
        raise HostConfigError(f"{path.name} must hold a JSON object.")
    return data


@dataclass(frozen=True)
class Route:
    pattern: re.Pattern[str]
    methods: tuple[str, ...]
    function: func.Function

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path)
        return found.groupdict() if found else None


def routes_of(functions: Iterable[func.Function], prefix: str) -> list[Route]:
    """The route table of the HTTP triggers, as the Functions host builds it.

    `functions` is what `FunctionApp.get_functions()` returns (it may be called
    once per process: it indexes the app, as the worker does at start-up).
    """
    table = []
    for function in functions:
        trigger = function.get_trigger()
        if not isinstance(trigger, HttpTrigger):
            continue
        template = "/".join(p for p in (prefix, trigger.route or function.get_function_name()) if p)
        default_methods = (func.HttpMethod.GET, func.HttpMethod.POST)
        methods = tuple(str(getattr(m, "value", m)).upper() for m in (trigger.methods or default_methods))
        table.append(Route(_compile(template), methods, function))
    return table


def _compile(template: str) -> re.Pattern[str]:
    # `{name}` and `{name:constraint}` segments become named groups; the rest is literal.
    parts = re.split(r"(\{[^}]+\})", template)
    regex = "".join(
        f"(?P<{p[1:-1].split(':')[0].rstrip('?')}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts
    )
    # Like the host's ASP.NET Core routing: any case, and a trailing slash or not.
    return re.compile("/" + regex + "/?", re.IGNORECASE)


class _WithoutTheRequest(logging.Filter):
    """aiohttp logs a request it cannot parse with the line it stopped at: a function key in
    the query or a bearer token in a header would reach the log. Keep what went wrong only."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args = "%s: %s %s", (record.getMessage(), error.code, type(error).__name__)
            record.exc_info = record.exc_text = None
        return True


_UNPARSED_REQUESTS = _WithoutTheRequest()


class LocalHost:
    def __init__(self, functions: Iterable[func.Function], config: HostConfig) -> None:
        self.config = config
        self.routes = routes_of(functions, config.route_prefix)
        self.web_root = ROOT / "web"
        self.openapi = ROOT / "openapi.yaml"

    def application(self) -> web.Application:
        logging.getLogger("aiohttp.server").addFilter(_UNPARSED_REQUESTS)  # added once, however often called
        application = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[self._cors], handler_args=HANDLER_ARGS
        )
        application.router.add_route("*", "/{path:.*}", self._dispatch)
        return application

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        prefix = f"/{self.config.route_prefix}" if self.config.route_prefix else ""
        if prefix and not path.lower().startswith(prefix.lower() + "/"):
            return self._static(request)
        allowed: list[str] = []
        for route in self.routes:
            params = route.match(path)
            if params is None:
                continue
            if request.method not in route.methods:
                allowed += route.methods
                continue
            return await self._call(route, params, request)
        if allowed:
            return _json_error(ApiError.method_not_allowed(sorted(set(allowed))))
        return self._static(request) if not prefix else _json_error(ApiError.not_found())

    async def _call(self, route: Route, params: dict[str, str], request: web.Request) -> web.StreamResponse:
        try:
            url = str(request.url)
        except ValueError:  # a Host header that is no host[:port], which the host's web server refuses too
            return _json_error(ApiError.invalid_parameter("The Host header must be a host name, and a port if any."))
        try:
            # The Functions host passes a body on only when it has a Content-Length: one sent in
            # chunks (Transfer-Encoding: chunked, as a streamed fetch or a proxy sends it) arrives empty.
            body = await request.read() if request.content_length else b""
        except web.HTTPRequestEntityTooLarge:
            return _json_error(ApiError.payload_too_large(MAX_BODY_BYTES))
        except ConnectionResetError:  # the client left before its body was whole: nobody to answer
            return web.Response(status=400)
        http_request = func.HttpRequest(
            method=request.method,
            url=url,
            headers=_as_the_host_passes(request.headers),
            params=_as_the_host_passes(request.query, drop_empty=True),
            route_params=params,
            body=body,
        )
        handler = route.function.get_user_function()
        if inspect.iscoroutinefunction(handler):
            response = await handler(http_request)
        else:
            response = await asyncio.to_thread(handler, http_request)
        return _send(response)

    def _static(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _json_error(ApiError.not_found())
        name = request.path.lstrip("/") or "index.html"
        if name == "openapi.yaml":
            file = self.openapi
        else:
            if "\x00" in name:  # no file has one, and the file system would refuse it with a ValueError
                return _json_error(ApiError.not_found())
            file = (self.web_root / name).resolve()
            if self.web_root.resolve() not in file.parents:
                return _json_error(ApiError.not_found())
        if not file.is_file():
            return _json_error(ApiError.not_found())
        content_type = STATIC_TYPES.get(file.suffix, "application/octet-stream")
        return web.Response(body=file.read_bytes(), content_type=content_type,
                            charset="utf-8" if content_type.startswith("text/") else None,
                            headers={"Cache-Control": "no-cache"})

    @web.middleware
    async def _cors(self, request: web.Request, handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed_origin = origin if origin and self.config.allows(origin) else None
        if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            # A preflight ends here, as in the host's CORS middleware: 204, and the CORS
            # headers only for an allowed origin (without them the browser refuses).
            response: web.StreamResponse = web.Response(status=204)
            if allowed_origin:
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
                requested = request.headers.get("Access-Control-Request-Headers")
                if requested:
                    response.headers["Access-Control-Allow-Headers"] = requested
                response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if "*" not in self.config.cors:  # the answer depends on the origin: a cache must not share it
            response.headers["Vary"] = "Origin"
        if allowed_origin:
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in self.config.cors else allowed_origin
            if self.config.cors_credentials:
                response.headers["Access-Control-Allow-Credentials"] = "true"
        return response


def _as_the_host_passes(values: MultiMapping[str], drop_empty: bool = False) -> dict[str, str]:
    """Query or headers as the Functions host hands them to a Python worker: a name sent
    twice is one value joined with commas (`?limit=2&limit=x` is "2,x", a 400, never the
    first of them quietly), and a query value left empty is not passed at all."""
    joined = {name: ",".join(values.getall(name)) for name in values.keys()}
    return {name: value for name, value in joined.items() if value or not drop_empty}


def _send(response: func.HttpResponse) -> web.Response:
    headers = dict(response.headers)
    if not any(name.lower() == "content-type" for name in headers) and response.mimetype:
        charset = f"; charset={response.charset}" if response.charset else ""
        headers["Content-Type"] = response.mimetype + charset
    return web.Response(status=response.status_code, body=response.get_body(), headers=headers)


def _json_error(error: ApiError) -> web.Response:
    return _send(error_response(error))
