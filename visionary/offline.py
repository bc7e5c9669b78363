"""The offline provider: pictures and suggestions with no key and no network.

Pictures are abstract compositions whose palette, shapes and layout all come
from a hash of the prompt, so the same prompt always gives the same bytes.
Pillow is imported here only, on first use.
"""

from __future__ import annotations

import asyncio
import colorsys
import hashlib
import io
import random

from PIL import Image, ImageDraw, ImageFilter

from visionary.images import GeneratedImage

MODEL = "offline"
DEFAULT_SIZE = (1024, 1024)


class OfflineImages:
    async def generate(self, prompt: str, size: str) -> GeneratedImage:
        # In a worker thread: a picture takes 0.1 s (1 s at 4096x4096) that would hold every
        # other request on the event loop, and the request's deadline could not cut it short.
        data = await asyncio.to_thread(draw, prompt, _dimensions(size))
        return GeneratedImage(data, "image/png", MODEL)


def draw(prompt: str, size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    """A deterministic abstract artwork for the prompt, as PNG bytes."""
    rng = random.Random(hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest())
    width, height = size
    palette = _palette(rng)
    image = _gradient(size, palette[0], palette[1], vertical=rng.random() < 0.5)
    canvas = ImageDraw.Draw(image, "RGBA")
    words = prompt.split() or [prompt]
    # Each word adds a shape: longer prompts make busier pictures.
    for index in range(min(12 + 2 * len(words), 48)):
        word = words[index % len(words)]
        color = (*palette[2 + (len(word) + index) % (len(palette) - 2)], rng.randint(90, 210))
        x, y = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        extent = rng.uniform(0.05, 0.45) * min(width, height)
        box = (x, y, x + extent, y + extent * rng.uniform(0.4, 1.6))
        kind = (sum(map(ord, word)) + index) % 4
        if kind == 0:
            canvas.ellipse(box, fill=color)
        elif kind == 1:
            canvas.rectangle(box, fill=color)
        elif kind == 2:
            points = [(rng.uniform(0, width), rng.uniform(0, height)) for _ in range(3)]
            canvas.polygon(points, fill=color)
        else:
            canvas.arc(box, rng.randint(0, 180), rng.randint(180, 360), fill=color, width=rng.randint(6, 28))
    # A few fine lines over the shapes, and a slight blur of the whole for depth.
    for _ in range(6):
        start = (rng.uniform(0, width), rng.uniform(0, height))
        end = (rng.uniform(0, width), rng.uniform(0, height))
        canvas.line([start, end], fill=(*palette[-1], 160), width=rng.randint(2, 6))
    image = image.filter(ImageFilter.BoxBlur(1))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _palette(rng: random.Random) -> list[tuple[int, int, int]]:
    base = rng.random()
    scheme = rng.choice([(0.0, 0.5), (0.0, 0.33, 0.66), (0.0, 0.08, 0.16), (0.0, 0.42, 0.58)])
    colors = []
    for index in range(7):
        hue = (base + scheme[index % len(scheme)] + rng.uniform(-0.03, 0.03)) % 1.0
        saturation = rng.uniform(0.35, 0.95)
        value = rng.uniform(0.15, 0.45) if index < 2 else rng.uniform(0.55, 1.0)
        r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return colors


def _gradient(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int], vertical: bool):
    ramp = Image.linear_gradient("L")  # 256x256, black to white, top to bottom
    if not vertical:
        ramp = ramp.rotate(90)
    mask = ramp.resize(size)
    return Image.composite(Image.new("RGB", size, bottom), Image.new("RGB", size, top), mask)


def _dimensions(size: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in size.lower().split("x"))
    except ValueError:
        return DEFAULT_SIZE
    if 64 <= width <= 4096 and 64 <= height <= 4096:
        return width, height
    return DEFAULT_SIZE


SUBJECTS = [
    "a lighthouse on a cliff at dusk", "a fox curled up in fresh snow", "a floating city above the clouds",
    "an old library lit by candles", "a koi pond in autumn", "an astronaut tending a rooftop garden",
    "a rainy neon street in Tokyo", "a whale gliding through a starry sky", "a desert caravan at sunrise",
    "a greenhouse full of glowing mushrooms", "a steam train crossing a stone viaduct",
    "a jazz trio in a smoky club", "a hummingbird drinking from a blue flower", "a castle made of glass",
    "a fishing village under the northern lights", "a robot painting a self-portrait",
]
GENRES = [
    "surrealism", "impressionism", "art nouveau", "cyberpunk", "minimalism", "baroque", "ukiyo-e",
    "retro futurism", "magical realism", "film noir", "pop art", "cubism",
]
MEDIUMS = [
    "oil painting", "watercolor", "photo-realistic, 4K", "abstract digital art", "modern flat illustration",
    "black and white photograph", "charcoal sketch", "isometric 3D render", "linocut print", "pastel drawing",
]


class OfflineSuggestions:
    """Suggestions composed from word lists: subject x genre x medium, new each call."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    async def suggest(self) -> str:
        subject = self._rng.choice(SUBJECTS)
        genre = self._rng.choice(GENRES)
        medium = self._rng.choice(MEDIUMS)
        return f"{subject[0].upper()}{subject[1:]}, {genre}, {medium}"
