"""What the app takes in text it stores and sends back (prompts and model text): which
characters, and for suggestions how many.

Control characters would break log lines and metadata, and a lone surrogate cannot be
encoded at all (as UTF-8 for a blob name, or percent-encoded for metadata). A prompt that
holds them is refused; text from a model loses them, so that a suggestion can always be
sent back as a prompt.
"""

from __future__ import annotations

import unicodedata


def forbidden(ch: str) -> bool:
    """A control character (C0, DEL, C1) other than tab and the line breaks, or a lone surrogate."""
    code = ord(ch)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return ch not in "\t\n\r\x85"  # U+0085: NEXT LINE, a line break as \n is
    return 0xD800 <= code <= 0xDFFF


def visible(text: str) -> bool:
    """Whether `text` shows anything: zero-width and direction marks (U+200B, U+FEFF,
    U+202E, ...) and whitespace alone draw nothing, and would be a blank caption."""
    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf") for ch in text)


def without_forbidden(text: str) -> str:
    return "".join(ch for ch in text if not forbidden(ch))


def shortened(text: str, max_chars: int) -> str:
    """`text` cut to `max_chars`, at the end of a word where one ends in time: a suggestion
    that generateImage takes back as it is, whatever the prompt limit and the model's length."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    if text[max_chars].isalnum() and (space := cut.rfind(" ")) > 0:  # mid-word
        cut = cut[:space]
    return cut.rstrip(" ,;:-") or cut.strip() or text[:max_chars]
