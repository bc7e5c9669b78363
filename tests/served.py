"""The app as users run it: `python -m visionary serve` in its own process."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from tests.azurite import ROOT, wait_until_listening


@dataclass
class ServedApp:
    url: str
    process: subprocess.Popen

    @classmethod
    def start(cls, port: int, env: dict[str, str]) -> ServedApp:
        process = subprocess.Popen(
            [sys.executable, "-m", "visionary", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        wait_until_listening(process, port)
        return cls(f"http://127.0.0.1:{port}", process)

    def stop(self) -> str:
        """Stop as Ctrl-C does; return what it printed."""
        self.process.send_signal(2)
        try:
            output, _ = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        return output
