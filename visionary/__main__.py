"""`python -m visionary`: the local host, the development stack, and maintenance commands.

    python -m visionary serve [--host H] [--port P]   the local host alone
    python -m visionary run [--host H] [--port P]     Azurite (data in .azurite/) and the local host
    python -m visionary migrate [--dry-run]           move the Node version's blobs into the naming scheme

Each reads local.settings.json as `func start` does, or the file named by --settings FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import io
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from visionary.localhost import ROOT, HostConfig, HostConfigError, port_number

if TYPE_CHECKING:
    from visionary.migration import Report
    from visionary.settings import Settings, StorageSettings

AZURITE_PORT = 10000
# Azurite's well-known account and key, public in its documentation.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionary", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the Functions app on the local host")
    run = commands.add_parser("run", help="start Azurite and the local host together (make run)")
    for command in (serve, run):
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=_port, help="default: Host.LocalHttpPort in the settings file, or 7071")
    migration = commands.add_parser("migrate", help="move the Node version's blobs into the naming scheme")
    migration.add_argument("--dry-run", action="store_true", help="list what would move, and change nothing")
    for command in (serve, run, migration):
        command.add_argument("--settings", type=Path, help="a settings file in place of local.settings.json")
    args = parser.parse_args(argv)
    try:
        config = HostConfig.load(settings=args.settings)
        if args.command == "migrate":  # its report and no log lines: the storage SDK logs requests at INFO
            return migrate(config, args.dry_run)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        port = args.port or config.port
        if args.command == "serve":
            return serve_app(config, args.host, port)
        return run_stack(config, args.host, port)
    except HostConfigError as error:
        print(error, file=sys.stderr)
        return 1


def _port(text: str) -> int:
    if (port := port_number(text)) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return port


def serve_app(config: HostConfig, host: str, port: int) -> int:
    from aiohttp import web

    from visionary.localhost import LocalHost
    from visionary.settings import Settings, unknown_settings

    if taken := _taken(host, port):
        print(taken, file=sys.stderr)
        return 1
    config.apply_values()
    # Offline only when no model service is named at all: a mistyped VISIONARY_PROVIDER is
    # reported (below, and by every request that needs it), not quietly replaced.
    if Settings.from_env().models.provider is None and not os.environ.get("VISIONARY_PROVIDER", "").strip():
        os.environ["VISIONARY_PROVIDER"] = "offline"
        print(
            "\n  No model service is configured: pictures are drawn by the OFFLINE provider.\n"
            "  To use a real model, set OPENAI_API_KEY (or OPENAI_BASE_URL), or AZURE_OPENAI_ENDPOINT,\n"
            "  in the environment or in local.settings.json, and restart.\n",
            flush=True,
        )
    settings = Settings.from_env()
    to_fix = [
        *settings.unmet(),  # requests that need the setting answer 503 not_configured
        *_storage_unmet(settings),  # every storage request answers 503 not_configured with it
        *unknown_settings(),  # a typo in a name: its setting takes no effect, silently on Azure
    ]
    for text in to_fix:
        print(f"  Setting to fix: {text}", file=sys.stderr, flush=True)
    import function_app
    from visionary import clients

    application = LocalHost(function_app.app.get_functions(), config).application()
    under_way: set[asyncio.Task] = set()
    application.middlewares.append(_tracked(under_way))
    application.on_shutdown.append(lambda _: _say_stopping(under_way))  # the requests may take minutes
    application.on_cleanup.append(lambda _: clients.close_all())
    print(f"VisionaryAI on {_url(host, port)}  (API under /{config.route_prefix}, gallery at /)",
          flush=True)
    web.run_app(application, host=host, port=port, print=None, access_log=None)
    return 0


def _storage_unmet(settings: Settings) -> list[str]:
    """What makes well-formed storage settings unusable, as the storage requests would name it.

    Only the storage client shows it (a malformed connection string, a key that is not base64),
    so it is not among Settings.unmet()."""
    from visionary.errors import ApiError
    from visionary.storage import Gallery

    try:
        storage = settings.require_storage()
    except ApiError:  # missing or malformed: Settings.unmet() names it
        return []

    async def build() -> None:
        await Gallery.from_settings(storage).close()  # no request: the client connects on first use

    try:
        asyncio.run(build())
    except ApiError as error:
        return [error.message]
    return []


def run_stack(
    config: HostConfig, host: str, port: int, azurite_port: int = AZURITE_PORT, data: Path = ROOT / ".azurite"
) -> int:
    """Azurite with its data under .azurite/ (the gallery survives a restart), then the host."""
    if _taken("127.0.0.1", azurite_port):
        if _taken(host, port):  # make run started twice: serving alone would meet the app's port taken too
            print(f"Ports {azurite_port} (Azurite's) and {port} are already in use: if make run is running in another "
                  f"terminal, the app is at {_url(host, port)}; else stop what holds them.", file=sys.stderr)
            return 1
        print(f"Port {azurite_port}, Azurite's, is already in use. If an Azurite is running there, serve the app "
              "alone against it: .venv/bin/python -m visionary serve", file=sys.stderr)
        return 1
    if taken := _taken(host, port):
        print(taken, file=sys.stderr)
        return 1
    program = ROOT / "node_modules" / ".bin" / "azurite-blob"
    if not program.exists():
        print(f"Azurite is not installed ({program.relative_to(ROOT)} is missing): make run installs it, "
              "or run npm ci first.", file=sys.stderr)
        return 1
    azurite = subprocess.Popen(
        [str(program), "--location", str(data),
         "--blobHost", "127.0.0.1", "--blobPort", str(azurite_port), "--skipApiVersionCheck",
         "--disableTelemetry", "--silent"],
        stdout=subprocess.DEVNULL,
        # Out of the terminal's process group: Ctrl-C reaches the host alone, which finishes its
        # requests (they may still store pictures), then stops Azurite below with one signal.
        # Signalled along with the host, Azurite began closing at once, died at the second
        # signal mid-close, and lost what it had not yet saved (it saves every 5 s).
        start_new_session=True,
    )
    try:
        if not _wait_for("127.0.0.1", azurite_port, azurite):
            print("Azurite did not start; see the messages above.", file=sys.stderr)
            return 1
        print(f"Azurite on http://127.0.0.1:{azurite_port} (data in {data.name}/)", flush=True)
        _default_to_azurite(config, azurite_port)
        return serve_app(config, host, port)
    except KeyboardInterrupt:
        return 0
    finally:
        azurite.terminate()
        try:
            azurite.wait(timeout=10)
        except subprocess.TimeoutExpired:
            azurite.kill()


def _default_to_azurite(config: HostConfig, port: int) -> None:
    """The local Azurite is the gallery's storage unless the environment or the settings file
    names another (AzureWebJobsStorage at a real account, say, as Functions projects often do)."""
    from visionary.settings import Settings

    config.apply_values()
    if Settings.from_env().storage is None:
        # Named with its port: UseDevelopmentStorage=true would mean port 10000, whatever is there.
        os.environ["AzureWebJobsStorage"] = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
        )


def migrate(config: HostConfig, dry_run: bool) -> int:
    """Print one line a blob as it goes, then the counts; 1 when anything conflicted or failed."""
    from azure.core.exceptions import AzureError

    from visionary.errors import ApiError
    from visionary.migration import describe
    from visionary.settings import Settings

    config.apply_values()
    if isinstance(sys.stdout, io.TextIOWrapper):  # a stream put in its place may have no reconfigure()
        sys.stdout.reconfigure(errors="backslashreplace")  # a prompt's emoji on a console that cannot show it
    try:
        storage = Settings.from_env().require_storage()
        report = asyncio.run(_migrate(storage, dry_run))
        print(report.summary(), flush=True)
    except ApiError as error:
        print(error.message, file=sys.stderr)
        return 1
    except AzureError as error:
        print(f"Stopped: {describe(error, storage.identity)}. Run again: it resumes where this run stopped.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted. Run again: it resumes where this run stopped.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # nothing reads the report any more (`| head`)
        # Python flushes stdout at exit: pointed at devnull, as its docs advise, that cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("Stopped: the output was closed. Run again: it resumes where this run stopped.", file=sys.stderr)
        return 1
    return 0 if report.ok else 1


async def _migrate(settings: StorageSettings, dry_run: bool) -> Report:
    from visionary import migration
    from visionary.storage import Gallery

    gallery = Gallery.from_settings(settings)  # the app's own storage client: keys or managed identity
    try:
        return await migration.migrate(
            gallery.container, dry_run, progress=lambda outcome: print(outcome.line(dry_run), flush=True)
        )
    finally:
        await gallery.close()


def _tracked(under_way: set[asyncio.Task]) -> Callable:
    """A middleware keeping the tasks of the requests being answered in `under_way`."""
    from aiohttp import web

    @web.middleware
    async def track(request: web.Request, handler: Callable) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        under_way.add(task)
        try:
            return await handler(request)
        finally:
            under_way.discard(task)

    return track


async def _say_stopping(under_way: set[asyncio.Task]) -> None:
    """The first Ctrl-C waits for the requests under way; a second one drops them. Left to
    aiohttp, a second signal broke its shutdown mid-way: pages of tracebacks, and exit 1."""
    def stop_now() -> None:
        dropped = [task for task in under_way if not task.done()]
        count = f"the {len(dropped)} request{'s' if len(dropped) != 1 else ''} under way"
        print(f"Stopping now: {count} {'is' if len(dropped) == 1 else 'are'} dropped.", flush=True)
        for task in dropped:
            task.cancel()

    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):  # aiohttp removes them once it has stopped
        with contextlib.suppress(NotImplementedError):  # Windows' event loops have no signal handlers
            loop.add_signal_handler(number, stop_now)
    print("Stopping: finishing the requests under way (a model may take minutes; Ctrl-C again drops them).",
          flush=True)


def _url(host: str, port: int) -> str:
    """The app's address as a browser takes it (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _taken(host: str, port: int) -> str | None:
    """Why the app cannot listen on `host` and `port`, or None. Every address of `host` is tried in
    its own family, as the server binds them (::1 on an IPv6 socket; localhost on both)."""
    try:
        # An empty host is every address, as the server reads it.
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as error:  # a name that does not resolve
        return f"Cannot listen on {host} port {port}: {error.strerror or error}."
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as the server's own: IPv4 addresses are tried on their own
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRNOTAVAIL and len(addresses) > 1:
                    continue  # a family this machine does not have, which the server skips too
                if error.errno != errno.EADDRINUSE:  # an address this machine does not have, say
                    return f"Cannot listen on {host} port {port}: {error.strerror or error}."
                return (f"Port {port} on {host} is already in use: stop what is using it, or choose another "
                        f"port (make run ARGS='--port {port + 1}', or --port with python -m visionary).")
    return None


def _wait_for(host: str, port: int, process: subprocess.Popen, timeout: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


if __name__ == "__main__":
    sys.exit(main())
