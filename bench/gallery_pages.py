"""Figure 1: a gallery page costs one list call, whatever the gallery holds.

With Azurite holding N = 100 and N = 5,000 images, median getImages (limit 50, through its
registered handler) over a bare `list_blobs` page of 50 names with the same SDK against the
same container (the floor); ours at 5,000 over ours at 100 beside the floor's same ratio; and
the Node version's way (list every blob, then sort by the timestamp in the name) against ours.
"""

from __future__ import annotations

import asyncio

from common import Azurite, Figure, app_env, free_port, interleaved, report, run, use_env

SIZES = (100, 5_000)
RUNS = 30
NODE_RUNS = 5
PAGE = 50


async def main() -> None:
    azurite = Azurite(free_port()).start()
    try:
        ours_at: dict[int, float] = {}
        floor_at: dict[int, float] = {}
        for size in SIZES:
            use_env(app_env(azurite, VISIONARY_PROVIDER="offline"))
            ours_at[size], floor_at[size] = await _measure(size)
        report(Figure(
            f"getImages at {SIZES[1]:,} over at {SIZES[0]:,} images", f"{ours_at[SIZES[1]] / ours_at[SIZES[0]]:.2f}x",
            f"floor: {floor_at[SIZES[1]] / floor_at[SIZES[0]]:.2f}x", None, None,
            "Azurite slows a little as a container grows; real Blob Storage does not",
        ))
    finally:
        azurite.stop()


async def _measure(size: int) -> tuple[float, float]:
    import azure.functions as func

    import function_app
    from visionary import clients

    functions = {f.get_function_name(): f for f in _functions(function_app)}
    handler = functions["getImages"].get_user_function()
    gallery = clients.current().gallery
    await _fill(gallery, size)
    container = gallery.container

    async def ours() -> None:
        request = func.HttpRequest("GET", f"http://localhost/api/getImages?limit={PAGE}", headers={},
                                   params={"limit": str(PAGE)}, body=b"")
        response = await handler(request)
        assert response.status_code == 200

    async def floor() -> None:
        pages = container.list_blobs(results_per_page=PAGE).by_page()
        async for page in pages:
            names = [blob.name async for blob in page]
            assert len(names) == PAGE
            break

    async def node_way() -> None:
        # The Node version: list everything, sort newest first by the timestamp in the name.
        names = [blob.name async for blob in container.list_blobs()]
        names.sort(key=lambda name: int(name.rsplit("_", 1)[1].split(".")[0]), reverse=True)
        assert len(names) == size

    timings = await interleaved({"ours": ours, "floor": floor}, RUNS)
    node = await interleaved({"node": node_way}, NODE_RUNS, warmup=1)
    ours_t, floor_t, node_t = timings["ours"], timings["floor"], node["node"]
    report(Figure(f"getImages limit {PAGE}, {size:,} images", str(ours_t), f"bare list_blobs page {floor_t}",
                  ours_t.median / floor_t.median, 1.3, f"median of {RUNS}, interleaved"))
    report(Figure(f"  Node way (list all, sort), {size:,} images", str(node_t), f"ours {ours_t.median * 1000:.1f} ms",
                  node_t.median / ours_t.median, None, "reported: how many times slower than ours"))
    await clients.close_all()
    return ours_t.median, floor_t.median


_indexed = []


def _functions(module):
    # FunctionApp.get_functions() indexes the app once per process, as the worker does.
    if not _indexed:
        _indexed.extend(module.app.get_functions())
    return _indexed


async def _fill(gallery, size: int) -> None:
    """`size` small images with the app's own names, 32 uploads at a time."""
    from tests.conftest import png_bytes

    image = png_bytes(1)
    start = 1_700_000_000_000
    await gallery.ensure_container()
    semaphore = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with semaphore:
            await gallery.upload(image, "image/png", f"Picture number {i}", ts=start + i * 1000)

    await asyncio.gather(*(one(i) for i in range(size)))


if __name__ == "__main__":
    run(main)
