"""Blob names, and reading them back.

A gallery blob is `gallery/{inv}_{title}_{ts}.{ext}` where `ts` is milliseconds
since the epoch and `inv = 9999999999999 - ts`. Blob Storage lists names in
lexicographic order, so the listing itself is newest first and a gallery page is
one list call. The API's display name is `{title}_{ts}.{ext}`, the Node
version's convention (clients split it on `_`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone

from visionary.text import visible

PREFIX = "gallery/"
MAX_TS = 9_999_999_999_999
MAX_TITLE_CHARS = 120
UNTITLED = "untitled"
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
CONTENT_TYPES = {ext: content_type for content_type, ext in EXTENSIONS.items()}

_SEPARATORS = re.compile(r"[\s/\\_]+")
# ASCII digits only: \d would read "١٦٩٠" or "１２３" as a timestamp.
_GALLERY_NAME = re.compile(r"gallery/([0-9]{13})_([^_/]+)_(0|[1-9][0-9]{0,12})\.(png|jpg|webp)")
# The Node version's name is the raw prompt, "/" and all, so the prompt is the whole path up to `_{ts}.ext`.
_NODE_NAME = re.compile(r"(.+)_([0-9]{1,13})\.(?:png|jpg|jpeg|webp)", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class BlobName:
    title: str
    ts: int  # milliseconds since the Unix epoch, UTC
    ext: str

    @property
    def blob(self) -> str:
        return f"{PREFIX}{MAX_TS - self.ts:013d}_{self.title}_{self.ts}.{self.ext}"

    @property
    def display_name(self) -> str:
        return f"{self.title}_{self.ts}.{self.ext}"

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.ts / 1000, tz=timezone.utc)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.ext]

    def later(self, ms: int = 1) -> BlobName:
        return BlobName(self.title, self.ts + ms, self.ext)


def title_from_prompt(prompt: str) -> str:
    """The prompt made safe and short enough to be part of a blob name."""
    # Controls go first (whitespace ones become separators), so that what is left
    # normalises and collapses once and for all: a title is its own title.
    text = "".join(ch if _allowed(ch) else " " if ch.isspace() else "" for ch in prompt)
    text = unicodedata.normalize("NFC", text)
    text = _SEPARATORS.sub(" ", text)
    text = text.strip()[:MAX_TITLE_CHARS].rstrip()
    # Zero-width characters alone (U+200B, U+2060, ...) would make a title nobody can see.
    return text if visible(text) else UNTITLED


# Bidirectional overrides and marks: in a name shown in a list they can make "cat_gnp.exe"
# read as something else. The prompt itself (metadata) keeps them.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _allowed(ch: str) -> bool:
    category = unicodedata.category(ch)
    # Cc: control characters. Cs: lone surrogates (cannot be encoded in a URL).
    # Cn: unassigned code points and non-characters such as U+FFFF. Co: private use
    # (U+E000 and on, Apple's logo U+F8FF), which Azure's naming rules say cannot be used.
    return category not in ("Cc", "Cs", "Cn", "Co") and ch not in _BIDI_CONTROLS


def name_for(prompt: str, ts: int, content_type: str = "image/png") -> BlobName:
    if not 0 <= ts <= MAX_TS:
        raise ValueError(f"timestamp out of range: {ts}")
    return BlobName(title_from_prompt(prompt), ts, EXTENSIONS[content_type])


def parse_gallery_name(blob: str) -> BlobName | None:
    """Read a scheme name back; None for anything that is not one."""
    match = _GALLERY_NAME.fullmatch(blob)
    if not match:
        return None
    inv, title, ts, ext = match.groups()
    if int(inv) != MAX_TS - int(ts):
        return None
    return BlobName(title, int(ts), ext)


@dataclass(frozen=True)
class NodeName:
    """A blob of the Node version: `{prompt}_{ts}.png`, where a "/" in the prompt made a folder.
    Other image extensions are read too; a migrated picture's type comes from its bytes."""

    prompt: str
    ts: int


def parse_node_name(blob: str) -> NodeName | None:
    """Read a Node name back from the whole path; None for anything else, and for anything under `gallery/`.

    `gallery/` is the scheme's: a Node prompt that began with "gallery/" put its picture
    there too, but such a name can have the scheme's very shape, so nothing there is read
    as the Node version's.
    """
    if blob.startswith(PREFIX):
        return None
    match = _NODE_NAME.fullmatch(blob)
    if not match:
        return None
    prompt, ts = match.groups()
    return NodeName(prompt, int(ts))
