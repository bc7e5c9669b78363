"""The app as users run it: `python -m visionary serve` in its own process."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import IO

from tests.azurite import ROOT, wait_until_listening


@dataclass
class ServedApp:
    url: str
    process: subprocess.Popen
    output: IO[str]  # a file, not a pipe: a pipe nobody reads fills up and stalls the app's logging

    @classmethod
    def start(cls, port: int, env: dict[str, str]) -> ServedApp:
        output = tempfile.TemporaryFile("w+")
        process = subprocess.Popen(
            [sys.executable, "-m", "visionary", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
        )
        wait_until_listening(process, port)
        return cls(f"http://127.0.0.1:{port}", process, output)

    def stop(self) -> str:
        """Stop as Ctrl-C does; return what it printed."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.output.seek(0)
        return self.output.read()
