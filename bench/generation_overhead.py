"""Figure 4: generateImage against a model that answers at once with a 1.5 MB PNG (b64_json),
over a bare upload of the same bytes to the same Azurite; and peak memory over 16 concurrent
generations.

Both run in this process: generateImage through its registered handler (the model server
runs in a process of its own, so its work is not counted as ours), the bare upload with the
same SDK. Peak memory is read from a local host process serving 16 concurrent requests.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from common import (Azurite, Figure, ServedApp, app_env, free_port, interleaved, ms, noise_png, report, run, use_env)
from model_server import ModelServerProcess

RUNS = 25
PNG_BYTES = 1_500_000


async def main() -> None:
    image = noise_png(PNG_BYTES)
    azurite = Azurite(free_port()).start()
    model = ModelServerProcess.start(image=image)
    try:
        env = app_env(azurite, OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=f"{model.url}/v1")
        use_env(env)
        await _overhead(azurite, image)
        await _peak_memory(env)
    finally:
        model.stop()
        azurite.stop()


async def _overhead(azurite: Azurite, image: bytes) -> None:
    import azure.functions as func
    from azure.storage.blob.aio import BlobServiceClient

    import function_app
    from visionary import clients

    handler = {f.get_function_name(): f for f in function_app.app.get_functions()}["generateImage"]
    handler = handler.get_user_function()
    body = json.dumps({"prompt": "A lighthouse at dusk, oil painting"}).encode()

    async def generate() -> None:
        request = func.HttpRequest("POST", "http://localhost/api/generateImage", headers={}, body=body)
        response = await handler(request)
        assert response.status_code == 201, response.get_body()

    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.get_container_client(f"bare-{uuid.uuid4().hex[:12]}")
    await container.create_container()

    async def bare_upload() -> None:
        await container.upload_blob(f"bare/{uuid.uuid4().hex}.png", image, overwrite=False)

    model_client = clients.current()._model_client

    async def bare_model_call() -> None:
        answer = await model_client.images.generate(model="gpt-image-2", prompt="A lighthouse", n=1)
        assert answer.data[0].b64_json

    timings = await interleaved({"ours": generate, "floor": bare_upload, "model": bare_model_call}, RUNS)
    await service.close()
    await clients.close_all()
    ours, floor, model = timings["ours"], timings["floor"], timings["model"]
    report(Figure("generateImage, 1.5 MB b64_json model answer", str(ours), f"bare upload {floor}",
                  ours.median / floor.median, 1.5, f"median of {RUNS}, interleaved"))
    report(Figure("  of which: the model's answer alone (same SDK client)", str(model), f"bare upload {floor}",
                  model.median / floor.median, None, "2 MB of JSON through the openai SDK"))
    both = model.median + floor.median
    report(Figure("generateImage over the bare model call plus the bare upload", ms(ours.median),
                  f"model {ms(model.median)} + upload {ms(floor.median)} = {ms(both)}", ours.median / both, None,
                  f"ours beyond the two calls it cannot avoid: {(ours.median - both) * 1000:.1f} ms"))


async def _peak_memory(env: dict[str, str]) -> None:
    served = ServedApp.start(free_port(), env)
    try:
        baseline = _vm_hwm(served.process.pid)
        async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
            answers = await asyncio.gather(*[
                http.post("/api/generateImage", json={"prompt": f"Concurrent picture {i}"}) for i in range(16)
            ])
        assert all(a.status_code == 201 for a in answers), [a.status_code for a in answers]
        peak = _vm_hwm(served.process.pid)
    finally:
        served.stop()
    report(Figure("peak memory, 16 concurrent generations (local host process)", f"{peak / 1024:.0f} MiB",
                  f"{baseline / 1024:.0f} MiB after start-up", None, None,
                  f"+{(peak - baseline) / 1024:.0f} MiB for 16 x 1.5 MB images"))


def _vm_hwm(pid: int) -> int:
    """Peak resident memory of a process, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


if __name__ == "__main__":
    run(main)
