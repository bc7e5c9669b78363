import asyncio
import base64
import io

import pytest
from PIL import Image

from visionary.errors import ApiError
from visionary.images import decode_base64, image_type
from visionary.offline import OfflineImages, draw


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, fmt)
    return buffer.getvalue()


def test_stored_types_are_recognised_by_their_bytes():
    assert image_type(encoded("PNG")) == "image/png"
    assert image_type(encoded("JPEG")) == "image/jpeg"
    assert image_type(encoded("WEBP")) == "image/webp"
    # Some encoders pad a JPEG with zero bytes after its end marker: still the whole picture.
    assert image_type(encoded("JPEG") + b"\x00" * 16) == "image/jpeg"


def test_anything_else_or_a_cut_image_is_refused():
    png = encoded("PNG")
    jpeg, webp = encoded("JPEG"), encoded("WEBP")
    cut = (png[: len(png) // 2], jpeg[: len(jpeg) // 2], webp[:20], webp[:-1])
    for data in (b"", b"<!doctype html><p>Sign in</p>", *cut, encoded("GIF")):
        assert image_type(data) is None
    # Signatures with nothing behind them: no header chunk, so no picture to show.
    assert image_type(b"\x89PNG\r\n\x1a\nIEND\xaeB`\x82") is None
    assert image_type(b"RIFF\x04\x00\x00\x00WEBP") is None


def test_model_base64_decodes_to_the_picture():
    png = encoded("PNG")
    assert decode_base64(base64.b64encode(png).decode()) == png


@pytest.mark.parametrize(
    "text",
    [
        "iVBORw0KGgo",  # cut: no whole quantum
        "iVBORw0KGgo=\n",  # a line break
        " iVBORw0KGgo=",
        "iVBORw0K-_go=",  # the URL-safe alphabet
        "iVBORw0KGgo===",  # excess padding
        "iVBORw0KGgo=AAAA",  # data after the padding
        "iVBORw0KGgé=",  # not ASCII
    ],
)
def test_anything_but_strict_base64_is_the_models_error(text: str):
    with pytest.raises(ApiError) as raised:
        decode_base64(text)
    assert (raised.value.status, raised.value.code) == (502, "upstream_error")


def test_the_offline_picture_is_a_deterministic_abstract_artwork():
    picture = draw("A lighthouse at dusk, oil painting")
    assert picture == draw("A lighthouse at dusk, oil painting")
    image = Image.open(io.BytesIO(picture))
    assert (image.format, image.size) == ("PNG", (1024, 1024))
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 1000  # shapes and gradients, not a flat fill
    other = Image.open(io.BytesIO(draw("a fox in fresh snow, watercolor"))).convert("RGB")
    assert image.convert("RGB").resize((8, 8)).tobytes() != other.resize((8, 8)).tobytes()


async def test_the_offline_provider_serves_other_requests_while_it_draws():
    # Another request's work, every 10 ms, while a picture takes a fifth of a second or more.
    loop = asyncio.get_running_loop()
    turns = [loop.time()]

    async def other_requests() -> None:
        while True:
            await asyncio.sleep(0.01)
            turns.append(loop.time())

    others = asyncio.create_task(other_requests())
    picture = await OfflineImages().generate("A lighthouse at dusk, oil painting", "2048x2048")
    turns.append(loop.time())
    others.cancel()
    assert picture.data == draw("A lighthouse at dusk, oil painting", (2048, 2048))
    drawing = turns[-1] - turns[0]
    longest_wait = max(later - earlier for earlier, later in zip(turns, turns[1:]))
    # Drawn on the loop, the others would wait for the whole picture; drawn beside it, a few ms.
    assert longest_wait < drawing / 2, (longest_wait, drawing)
