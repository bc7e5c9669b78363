"""The loopback OpenAI-protocol server of the tests, in a process of its own.

Benchmarks run it apart so that its work (encoding megabytes of base64, sleeping
to imitate a slow model) is never counted as the app's.

    python bench/model_server.py --port P --image picture.png [--delay 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.azurite import free_port, stop_process, wait_until_listening  # noqa: E402
from tests.openai_server import OpenAIServer  # noqa: E402
from visionary.allocator import keep_freed_pages  # noqa: E402


@dataclass
class ModelServerProcess:
    url: str
    process: subprocess.Popen

    @classmethod
    def start(cls, image: bytes, delay: float = 0.0) -> ModelServerProcess:
        picture = Path(tempfile.mkstemp(suffix=".png")[1])
        picture.write_bytes(image)
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, __file__, "--port", str(port), "--image", str(picture), "--delay", str(delay)]
        )
        wait_until_listening(process, port)
        return cls(f"http://127.0.0.1:{port}", process)

    def stop(self) -> None:
        stop_process(self.process)


async def serve(port: int, image: bytes, delay: float) -> None:
    # A steady stand-in for the model service: without this, glibc gave each 2 MB answer fresh
    # pages every other request, and the answers arrived 1.1 ms slower and faster in turn, a
    # bias on whichever call the benchmark's order put after another model call.
    keep_freed_pages()
    server = OpenAIServer(port=port)
    server.reset(image=image)
    server.behaviour.delay = delay
    server.record = False
    await server.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.image.read_bytes(), args.delay))
