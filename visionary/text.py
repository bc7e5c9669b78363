"""Which characters the app takes in text it stores and sends back: prompts and model text.

Control characters would break log lines and metadata, and a lone surrogate cannot be
encoded at all (as UTF-8 for a blob name, or percent-encoded for metadata). A prompt that
holds them is refused; text from a model loses them, so that a suggestion can always be
sent back as a prompt.
"""

from __future__ import annotations


def forbidden(ch: str) -> bool:
    code = ord(ch)
    return (code < 0x20 and ch not in "\t\n\r") or code == 0x7F or 0xD800 <= code <= 0xDFFF


def without_forbidden(text: str) -> str:
    return "".join(ch for ch in text if not forbidden(ch))
