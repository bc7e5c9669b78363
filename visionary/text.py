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


# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt), which unicodedata does
# not expose, outside the Cf category: fillers and selectors drawn as nothing. And U+2800,
# the blank braille pattern.
_DRAWN_AS_NOTHING = (
    (0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x2800, 0x2800),
    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0xE0000, 0xE0FFF),
)


def visible(text: str) -> bool:
    """Whether `text` shows anything: whitespace, zero-width and direction marks (U+200B,
    U+FEFF, U+202E), fillers (U+3164) and selectors (U+FE0F) alone would be a blank caption."""
    return any(not _drawn_as_nothing(ch) for ch in text)


def _drawn_as_nothing(ch: str) -> bool:
    code = ord(ch)
    return (
        ch.isspace()
        or unicodedata.category(ch) in ("Cc", "Cf")
        or any(low <= code <= high for low, high in _DRAWN_AS_NOTHING)
    )


def without_forbidden(text: str) -> str:
    return "".join(ch for ch in text if not forbidden(ch))


def shortened(text: str, max_chars: int) -> str:
    """`text` cut to `max_chars`, at the end of a word where one ends in time: a suggestion
    that generateImage takes back as it is, whatever the prompt limit and the model's length."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    if text[max_chars].isalnum() and (space := max(map(cut.rfind, " \t\n"))) > 0:  # mid-word
        cut = cut[:space]
    return cut.rstrip(" \t\r\n,;:-") or cut.strip() or text[:max_chars]
