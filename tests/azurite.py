"""A real Azurite blob service for the test session: in memory, on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Azurite's well-known account and key, as `make run` names its Azurite.
from visionary.__main__ import AZURITE_ACCOUNT as ACCOUNT
from visionary.__main__ import AZURITE_KEY as KEY

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(process: subprocess.Popen, port: int, timeout: float = 30.0) -> None:
    """Wait for a server process to accept connections on a loopback port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, process.args[:3]))} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{process.args[0]} did not listen on port {port} within {timeout} s")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Ask a server process to stop; kill it if it has not within `timeout` seconds."""
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Azurite:
    port: int
    process: subprocess.Popen | None = None
    https: bool = False  # set when started with --cert/--key
    debug_log: Path | None = None  # Azurite's request log, when started with --debug

    @property
    def blob_endpoint(self) -> str:
        return f"{'https' if self.https else 'http'}://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={'https' if self.https else 'http'};AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def start(self, *extra: str) -> Azurite:
        self.https = "--cert" in extra
        if "--debug" in extra:
            self.debug_log = Path(extra[extra.index("--debug") + 1])
        binary = ROOT / "node_modules" / ".bin" / "azurite-blob"
        if not binary.exists():
            raise RuntimeError("Azurite is not installed: run `npm ci` (make test does).")
        self.process = subprocess.Popen(
            [
                str(binary), "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry",
                "--blobHost", "127.0.0.1", "--blobPort", str(self.port), *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        wait_until_listening(self.process, self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            stop_process(self.process)
        self.process = None
