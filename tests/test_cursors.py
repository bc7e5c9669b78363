import base64
import json

import pytest

from visionary.cursors import MAX_CURSOR_CHARS, decode_cursor, encode_cursor
from visionary.errors import ApiError


def test_cursors_are_ours_or_rejected():
    assert decode_cursor(encode_cursor("gallery/123_x_1.png")) == "gallery/123_x_1.png"
    nested = base64.urlsafe_b64encode(b"[" * 2000).decode()  # deeper than json.loads recurses
    for cursor in ["gallery/123_x_1.png", "e30", "W10", "eyJ2IjoyLCJ0b2tlbiI6IngifQ", "!!!", "a" * 5000, nested]:
        with pytest.raises(ApiError) as caught:
            decode_cursor(cursor)
        assert caught.value.code == "invalid_parameter"


def test_a_cursor_at_the_longest_blob_name_fits():
    # 1,024 characters, each four bytes of UTF-8: more than any blob name, and so any token, holds.
    longest = "gallery/" + "\U0001F600" * 1016
    cursor = encode_cursor(longest)
    assert len(cursor) <= MAX_CURSOR_CHARS
    assert decode_cursor(cursor) == longest


@pytest.mark.parametrize("token", ["gallery/x\x01y.png", "gallery/\ufdd0.png", "gallery/\uffff.png", "gallery/\U0001fffe.png"])
def test_a_token_no_listing_can_hold_is_refused_though_its_check_matches(token: str):
    # List Blobs answers in XML, which cannot carry \x01; Azurite answers such a marker 500.
    with pytest.raises(ApiError):
        decode_cursor(encode_cursor(token))


@pytest.mark.parametrize("token", ["", "gallery/" + "a" * MAX_CURSOR_CHARS])
def test_a_token_of_ours_that_no_listing_makes_is_refused(token: str):
    # An empty token would list from the start (a silent restart); one longer than any blob name
    # would be read and sent on whole, however long a client makes it.
    with pytest.raises(ApiError):
        decode_cursor(encode_cursor(token))


def _cursor(payload: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_a_cursor_made_up_or_from_another_version_is_refused():
    token = "gallery/8299999999999_a cat_1700000000000.png"
    made_up = {"v": 1, "token": token, "check": "0" * 16}
    next_version = {"v": 2, "token": token, "check": json.loads(base64.urlsafe_b64decode(encode_cursor(token) + "=="))["check"]}
    for payload in (made_up, next_version):
        with pytest.raises(ApiError):
            decode_cursor(_cursor(payload))


def test_a_mangled_cursor_is_refused_not_read_around():
    cursor = encode_cursor("gallery/8299999999999_a cat_1700000000000.png")
    for mangled in (cursor[:8] + "." + cursor[8:], cursor[:8] + " " + cursor[8:], cursor.replace("-", "+").replace("_", "/") + "!"):
        with pytest.raises(ApiError):
            decode_cursor(mangled)
