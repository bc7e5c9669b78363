"""The gallery's page cursors: Azure's continuation token in an encoding of our own.

A cursor that is not ours is a 400, instead of silently listing from somewhere else
or restarting the listing: base64url JSON with a version and a check of the token.
The check holds no secret; it catches made-up and mangled cursors, not forged ones,
and a forged one can only list the gallery its sender can list anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from visionary.errors import ApiError

_CURSOR_VERSION = 1
# A token can hold a blob name: 1,024 characters, up to 4 KiB of UTF-8, base64 twice over.
MAX_CURSOR_CHARS = 12_288


def encode_cursor(continuation_token: str) -> str:
    payload = {"v": _CURSOR_VERSION, "token": continuation_token, "check": _check(continuation_token)}
    # As UTF-8, not \u escapes: a token of a long non-ASCII name must still fit MAX_CURSOR_CHARS.
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _check(token: str) -> str:
    # Azurite's tokens are bare blob names, which any marker resembles: without a check,
    # a cursor made up by a client would silently list from somewhere else.
    return hashlib.sha256(f"visionary-cursor\x00{token}".encode()).hexdigest()[:16]


def decode_cursor(cursor: str) -> str:
    """Azure's continuation token from one of our cursors; anything else is a 400."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.b64decode(padded, altchars=b"-_", validate=True))
        token = payload["token"]
        if payload["v"] != _CURSOR_VERSION or not isinstance(token, str) or payload["check"] != _check(token):
            raise ValueError("not ours")
        if not token or not all(_in_xml(ch) and not _noncharacter(ch) for ch in token):
            raise ValueError("not a token storage would accept")
    except (binascii.Error, ValueError, TypeError, KeyError, RecursionError):  # Recursion: "[[[[..."
        raise invalid_cursor() from None
    return payload["token"]


def _in_xml(ch: str) -> bool:
    # What XML 1.0 can carry, as List Blobs answers are XML: a name with a tab or a line break
    # (a Node-version prompt's, say) ends pages and is a token; \x01 is in no answer, and
    # Azurite answers such a marker 500.
    code = ord(ch)
    return code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or code >= 0x10000


def _noncharacter(ch: str) -> bool:
    # U+FDD0..U+FDEF and the last two code points of each plane. Azure's naming rules refuse
    # them in blob names, so no listing's token holds one; Azurite answers such a marker 500.
    code = ord(ch)
    return 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE


def invalid_cursor() -> ApiError:
    return ApiError.invalid_parameter(
        "cursor is not one this API issued; pass the nextCursor of the previous page, or omit it."
    )
