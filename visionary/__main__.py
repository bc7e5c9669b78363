"""`python -m visionary`: the local host, the development stack, and maintenance commands.

    python -m visionary serve [--host H] [--port P]   the local host alone
    python -m visionary run                           Azurite (data in .azurite/) and the local host
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from visionary.localhost import ROOT

AZURITE_PORT = 10000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionary", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the Functions app on the local host")
    run = commands.add_parser("run", help="start Azurite and the local host together (make run)")
    for command in (serve, run):
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=7071)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return serve_app(args.host, args.port)
    return run_stack(args.host, args.port)


def serve_app(host: str, port: int) -> int:
    from aiohttp import web

    from visionary.localhost import HostConfig, LocalHost
    from visionary.settings import Settings

    if taken := _taken(host, port):
        print(taken, file=sys.stderr)
        return 1
    config = HostConfig.load()
    config.apply_values()
    if Settings.from_env().models.provider is None:
        os.environ["VISIONARY_PROVIDER"] = "offline"
        print(
            "\n  No model service is configured: pictures are drawn by the OFFLINE provider.\n"
            "  To use a real model, set OPENAI_API_KEY (or OPENAI_BASE_URL), or AZURE_OPENAI_ENDPOINT,\n"
            "  in the environment or in local.settings.json, and restart.\n",
            flush=True,
        )
    import function_app

    from visionary import clients

    application = LocalHost(function_app.app.get_functions(), config).application()
    application.on_cleanup.append(lambda _: clients.close_all())
    print(f"VisionaryAI on http://{host}:{port}  (API under /{config.route_prefix}, gallery at /)", flush=True)
    web.run_app(application, host=host, port=port, print=None, access_log=None)
    return 0


def run_stack(host: str, port: int) -> int:
    """Azurite with its data under .azurite/ (the gallery survives a restart), then the host."""
    for taken in (_taken("127.0.0.1", AZURITE_PORT), _taken(host, port)):
        if taken:
            print(taken, file=sys.stderr)
            return 1
    azurite = subprocess.Popen(
        [str(ROOT / "node_modules" / ".bin" / "azurite-blob"), "--location", str(ROOT / ".azurite"),
         "--blobHost", "127.0.0.1", "--blobPort", str(AZURITE_PORT), "--skipApiVersionCheck",
         "--disableTelemetry", "--silent"],
        stdout=subprocess.DEVNULL,
    )
    try:
        if not _wait_for("127.0.0.1", AZURITE_PORT, azurite):
            print("Azurite did not start; see the messages above.", file=sys.stderr)
            return 1
        print(f"Azurite on http://127.0.0.1:{AZURITE_PORT} (data in .azurite/)", flush=True)
        os.environ.setdefault("AzureWebJobsStorage", "UseDevelopmentStorage=true")
        return serve_app(host, port)
    except KeyboardInterrupt:
        return 0
    finally:
        azurite.terminate()
        try:
            azurite.wait(timeout=10)
        except subprocess.TimeoutExpired:
            azurite.kill()


def _taken(host: str, port: int) -> str | None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return f"Port {port} on {host} is already in use: stop what is using it, or choose another port."
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
