"""Figure 4: generateImage against a model that answers at once with a 1.5 MB PNG (b64_json),
over a bare upload of the same bytes to the same Azurite; and peak memory over 16 concurrent
generations.

Beside ours, in the same rounds, the floors under it: the openai SDK's call as generateImage
makes it, then the bare upload; the same without the SDK (one aiohttp POST); and the model's
answer merely arriving. Also the SDK's own parse, which generateImage does not use.
A staged upload (Put Block + Put Block List) shows what overlapping the upload with the
download would cost.

All run in this process: generateImage through its registered handler (the model server
runs in a process of its own, so its work is not counted as ours), the uploads with the
app's own storage client (the same SDK on the same transport settings). Peak memory is
read from a local host process serving 16 concurrent requests.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from common import (
    Azurite, Figure, ServedApp, app_env, free_port, interleaved, ms, noise_png, report, run, use_env,
)
from model_server import ModelServerProcess

RUNS = 40
PNG_BYTES = 1_500_000


async def main() -> None:
    image = noise_png(PNG_BYTES)
    azurite = Azurite(free_port()).start()
    model = ModelServerProcess.start(image=image)
    try:
        env = app_env(azurite, OPENAI_API_KEY="sk-bench", OPENAI_BASE_URL=f"{model.url}/v1")
        use_env(env)
        await _overhead(model.url, image)
        await _peak_memory(env)
    finally:
        model.stop()
        azurite.stop()


async def _overhead(model_url: str, image: bytes) -> None:
    import aiohttp
    import azure.functions as func
    import pybase64
    from azure.storage.blob import BlobBlock

    import function_app
    from visionary import clients
    from visionary.errors import ApiError
    from visionary.images import MAX_ANSWER_BYTES
    from visionary.models import json_answer, parse_json

    handler = {f.get_function_name(): f for f in function_app.app.get_functions()}["generateImage"]
    handler = handler.get_user_function()
    body = json.dumps({"prompt": "A lighthouse at dusk, oil painting"}).encode()

    async def generate() -> None:
        request = func.HttpRequest("POST", "http://localhost/api/generateImage", headers={}, body=body)
        response = await handler(request)
        assert response.status_code == 201, response.get_body()

    # The app's own storage client, so the floor runs on the same transport settings as ours
    # (a default client would also look for a .netrc file in a thread on every request).
    container = clients.current().gallery.service.get_container_client(f"bare-{uuid.uuid4().hex[:12]}")
    await container.create_container()

    async def bare_upload(data: bytes = image) -> None:
        await container.upload_blob(f"bare/{uuid.uuid4().hex}.png", data, overwrite=False)

    model_client = clients.current()._model_client
    ask = {"model": "gpt-image-2", "prompt": "A lighthouse", "n": 1}

    async def sdk_then_upload() -> None:
        """The floor on the openai SDK, called as generateImage calls it: ask, parse, decode, upload."""
        answer = await json_answer(
            model_client.images.with_streaming_response.generate(**ask), MAX_ANSWER_BYTES, ApiError.internal
        )
        await bare_upload(pybase64.b64decode(answer["data"][0]["b64_json"], validate=True))

    async def plain_sdk_then_upload() -> None:
        """The same with the SDK's own parse (json.loads into its models)."""
        answer = await model_client.images.generate(**ask)
        await bare_upload(pybase64.b64decode(answer.data[0].b64_json, validate=True))

    session = aiohttp.ClientSession(headers={"authorization": "Bearer sk-bench"})

    async def receive() -> bytes:
        """The model's answer arriving, and nothing else: no parsing, no decoding, no upload."""
        async with session.post(f"{model_url}/v1/images/generations", json=ask) as answer:
            return await answer.read()

    async def http_then_upload() -> None:
        """The floor on the SDK without the SDK: one POST on aiohttp, then the same parse, decode, upload."""
        b64 = parse_json(await receive())["data"][0]["b64_json"]
        await bare_upload(pybase64.b64decode(b64, validate=True))

    async def staged_blocks() -> None:
        """What overlapping the download with the upload would need: Put Block, then Put Block List."""
        blob = container.get_blob_client(f"blocks/{uuid.uuid4().hex}.png")
        await blob.stage_block("0000", image)
        await blob.commit_block_list([BlobBlock("0000")])

    timings = await interleaved({"ours": generate, "floor": bare_upload, "sdk": sdk_then_upload,
                                 "plain sdk": plain_sdk_then_upload, "http": http_then_upload,
                                 "receive": receive, "blocks": staged_blocks}, RUNS)
    await session.close()
    await clients.close_all()
    ours, floor, sdk = timings["ours"], timings["floor"], timings["sdk"]

    def over_upload(name: str, key: str, note: str, bound: float | None = None) -> Figure:
        ratio = timings[key].median / floor.median
        return Figure(name, str(timings[key]), f"bare upload {floor}", ratio, bound, note)

    report(over_upload("generateImage, 1.5 MB b64_json model answer", "ours",
                       f"median of {RUNS}, interleaved", bound=1.5))
    report(over_upload("  floor on the openai SDK: its call as ours, then the bare upload", "sdk",
                       "the SDK's request and retries, our capped read, pydantic-core's parse, decode"))
    report(over_upload("  the same with the SDK's own parse", "plain sdk",
                       "json.loads into its models: what pydantic-core saves"))
    report(over_upload("  floor without the SDK: aiohttp POST, the same parse, the bare upload", "http",
                       "what the SDK's machinery costs: the SDK floor less this"))
    report(over_upload("  the model's answer alone: aiohttp POST and read, nothing parsed or stored", "receive",
                       "2 MB of base64 over loopback, from the model server's process"))
    ours_alone = f"{(ours.median - sdk.median) * 1000:+.1f} ms"
    report(Figure("  generateImage over the floor on the SDK", ms(ours.median),
                  f"SDK call then upload {ms(sdk.median)}", ours.median / sdk.median, None,
                  f"ours: {ours_alone} (name, metadata, create-only, SAS, answer)"))
    report(over_upload("  staged upload (Put Block + Put Block List) of the same bytes", "blocks",
                       "why the upload does not overlap the download"))


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
