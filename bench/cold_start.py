"""Figure 3: cold start.

`python -c "import function_app"` over `python -c "import azure.functions,
azure.storage.blob.aio, aiohttp"` (what any such app imports), median of 10 runs each,
interleaved; the heavy libraries load on first use only; and the first getImages in a
fresh process.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from common import ROOT, Azurite, Figure, app_env, free_port, ms, report, run
from tests.served import MODEL_CODE

RUNS = 10
OURS = "import function_app"
BASELINE = "import azure.functions, azure.storage.blob.aio, aiohttp"
FIRST_PAGE = """
import asyncio, json, sys, time
started = time.perf_counter()
import azure.functions as func
import function_app
imported = time.perf_counter()
loaded = [m for m in %r if m in sys.modules]
handler = {f.get_function_name(): f for f in function_app.app.get_functions()}["getImages"].get_user_function()
async def first_page():
    request = func.HttpRequest("GET", "http://localhost/api/getImages", headers={}, params={}, body=b"")
    response = await handler(request)
    assert response.status_code == 200, response.get_body()
asyncio.run(first_page())
done = time.perf_counter()
print(json.dumps({"import": imported - started, "first_get_images": done - imported,
                  "loaded": loaded}))
""" % (MODEL_CODE,)


def python_c(code: str, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - started


async def main() -> None:
    env = app_env(Azurite(0))  # settings do not matter for an import
    ours, baseline = [], []
    for _ in range(RUNS):
        ours.append(python_c(OURS, env))
        baseline.append(python_c(BASELINE, env))
    o, b = statistics.median(ours), statistics.median(baseline)

    azurite = Azurite(free_port()).start()
    try:
        first = json.loads(subprocess.run(
            [sys.executable, "-c", FIRST_PAGE], cwd=ROOT, env=app_env(azurite), capture_output=True, text=True,
            check=True,
        ).stdout)
    finally:
        azurite.stop()
    report(Figure("cold start: import function_app", f"{ms(o)} (min {ms(min(ours))}, max {ms(max(ours))})",
                  f"azure.functions + blob.aio + aiohttp {ms(b)}", o / b, 1.25,
                  f"median of {RUNS}; loaded at import of {', '.join(MODEL_CODE)}: {first['loaded']}"))
    report(Figure("first getImages in a fresh process", ms(first["first_get_images"]),
                  f"after an import of {ms(first['import'])}", None, None,
                  "includes the storage client's creation and its first connection"))


if __name__ == "__main__":
    run(main)
