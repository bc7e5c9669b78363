"""The app as users run it: `python -m visionary serve` in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.azurite import ROOT, stop_process, wait_until_listening

# Settings the app reads: every test starts with none of them and sets its own.
APP_SETTINGS = ("VISIONARY_", "OPENAI_", "AZURE_OPENAI_", "accountName", "accountKey", "AzureWebJobsStorage", "AZURE_CLIENT_ID")
# The environment of an app process: this machine's, less every app setting.
ROOT_ENV = {name: value for name, value in os.environ.items() if not name.startswith(APP_SETTINGS)}
# What the app loads on first use only, never when it is imported: a cold start without them.
MODEL_CODE = ("openai", "PIL", "azure.identity", "httpx", "httpx2", "pybase64", "pydantic_core", "ctypes")
# What app processes read in place of local.settings.json, which `make run` creates in the
# project and a developer fills: a test's settings are its environment, and nothing else.
NO_LOCAL_SETTINGS = ("--settings", str(Path(__file__).with_name("local.settings.empty.json")))


@dataclass
class ServedApp:
    url: str
    process: subprocess.Popen
    output: IO[str]  # a file, not a pipe: a pipe nobody reads fills up and stalls the app's logging

    @classmethod
    def start(cls, port: int, env: dict[str, str]) -> ServedApp:
        output = tempfile.TemporaryFile("w+")
        process = subprocess.Popen(
            [sys.executable, "-m", "visionary", "serve", "--port", str(port), *NO_LOCAL_SETTINGS],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
        )
        wait_until_listening(process, port)
        return cls(f"http://127.0.0.1:{port}", process, output)

    def read(self) -> str:
        """What it has printed so far."""
        self.output.seek(0)
        return self.output.read()

    def stop(self) -> str:
        """Stop as Ctrl-C does; return what it printed."""
        stop_process(self.process, signal.SIGINT)
        return self.read()
