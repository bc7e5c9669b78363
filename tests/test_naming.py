import string
import unicodedata
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from visionary import naming

MAX_TS = naming.MAX_TS
# Text that stresses names: every Unicode category (surrogates too), separators, URL syntax.
pieces = st.one_of(
    st.characters(codec=None),
    st.sampled_from(list("_/\\.%?#&=+ \t\n\r\x00\u200f\u202e\u2028")),
    st.sampled_from(["😀", "👩‍🎨", "東京", "שלום", "مرحبا", "e\u0301", "..", "%2F"]),
)
prompts = st.lists(pieces, max_size=200).map("".join)
timestamps = st.integers(min_value=0, max_value=MAX_TS)


@given(prompts, timestamps)
@example("a" * 10_000, 1_700_000_000_000)
@example("../../etc/passwd", 1)
@example("%2F?#_", 0)
@example("", MAX_TS)
@example("   \n\t  ", 1_700_000_000_000)
def test_a_name_reads_back_as_its_title_timestamp_and_type(prompt: str, ts: int) -> None:
    name = naming.name_for(prompt, ts)
    parsed = naming.parse_gallery_name(name.blob)
    assert parsed == name
    assert parsed.title == naming.title_from_prompt(prompt)
    assert naming.title_from_prompt(parsed.title) == parsed.title  # titles are fixed points
    assert name.display_name == f"{name.title}_{ts}.png"


@given(prompts, timestamps)
@example("a/" * 5_000, 0)
@example("Think different \uf8ff", 0)
def test_every_name_is_a_valid_blob_name(prompt: str, ts: int) -> None:
    blob = naming.name_for(prompt, ts).blob
    assert 1 <= len(blob) <= 1024
    assert len(quote(blob, safe="/")) <= 4096  # the encoded URL path stays reasonable too
    blob.encode("utf-8")  # no lone surrogates
    assert blob.count("/") == 1 and not blob.endswith((".", "/"))
    assert not any(ch in blob for ch in "\\\r\n\t\x00")
    assert not any(unicodedata.category(ch) in ("Cc", "Cs", "Cn", "Co") for ch in blob)


@given(st.lists(st.tuples(prompts, timestamps), min_size=2, max_size=20))
@settings(max_examples=200)
def test_lexicographic_order_is_newest_first(entries: list[tuple[str, int]]) -> None:
    names = [naming.name_for(prompt, ts) for prompt, ts in entries]
    by_name = sorted(names, key=lambda n: n.blob)
    timestamps_in_listing_order = [n.ts for n in by_name]
    assert timestamps_in_listing_order == sorted(timestamps_in_listing_order, reverse=True)


def test_titles_follow_the_spec() -> None:
    title = naming.title_from_prompt
    assert title("  A  cat\n\ton_a//mat\\\\ ") == "A cat on a mat"
    assert title("caf\u0065\u0301") == "caf\u00e9"  # NFC
    assert title("bell\x07 and NUL\x00") == "bell and NUL"
    assert title("invoice \u202egnp.exe\u202c") == "invoice gnp.exe"  # no right-to-left override
    assert title("x" * 500) == "x" * 120
    assert title("___ /// \\\\") == "untitled"
    assert title("") == "untitled"
    assert title("\u200b\u200c\u2060\ufeff") == "untitled"  # zero-width only: nothing to see
    assert title("a\u200bb") == "a\u200bb"  # inside a visible title, kept as written
    assert title("Think different \uf8ff\ue000\U000f0000") == "Think different"  # private use: Azure refuses it


def test_names_of_the_node_version_are_read() -> None:
    node = naming.parse_node_name("A cat_on a mat_1700000000000.png")
    assert node == naming.NodeName("A cat_on a mat", 1_700_000_000_000)
    target = naming.name_for(node.prompt, node.ts, "image/png")
    assert target.blob == "gallery/8299999999999_A cat on a mat_1700000000000.png"
    slashed = naming.parse_node_name("cats/dogs_1690000000001.png")  # the raw prompt, "/" and all
    assert slashed == naming.NodeName("cats/dogs", 1_690_000_000_001)
    assert naming.parse_node_name("gallery/0_x_1.png") is None  # the scheme's folder, whatever the name
    assert naming.parse_node_name("gallery/cat_1690000000001.png") is None
    assert naming.parse_node_name("no timestamp.png") is None
    assert naming.parse_gallery_name("A cat_1700000000000.png") is None


def test_inverted_timestamp_must_match() -> None:
    assert naming.parse_gallery_name("gallery/0000000000000_x_1.png") is None
    assert naming.parse_gallery_name("gallery/9999999999998_x_1.png") is not None


def test_every_stored_type_has_an_extension() -> None:
    for content_type, ext in naming.EXTENSIONS.items():
        assert naming.name_for("p", 5, content_type).blob.endswith("." + ext)
        assert set(ext) <= set(string.ascii_lowercase)


def test_a_scheme_timestamp_has_no_leading_zeros_as_the_scheme_writes_none():
    # Read as 1, it would be listed under a name (and a link) that is not the blob's.
    assert naming.parse_gallery_name("gallery/9999999999998_x_0000000000001.png") is None
    assert naming.parse_gallery_name("gallery/9999999999999_x_0.png") is not None


def test_a_timestamp_is_ascii_digits_as_node_and_the_scheme_wrote_them():
    assert naming.parse_node_name("arabic digits_١٦٩٠٠٠٠٠٠٠٠٠١.png") is None
    assert naming.parse_node_name("fullwidth_１２３.png") is None
    assert naming.parse_gallery_name("gallery/٨٢٣٦٢٨٧٩٩٩٨٧٦_a cat_١٧٦٣٧١٢٠٠٠١٢٣.png") is None


def test_a_title_cut_at_a_space_ends_at_a_word():
    # Cut at 120 characters right after a word, the title would end in a space: " _1700000000000.png".
    assert naming.title_from_prompt("a" * 119 + " and more") == "a" * 119


def test_node_names_in_capitals_or_with_line_breaks_are_read():
    # The Node version stored the raw prompt: an extension in capitals, a prompt over several lines.
    assert naming.parse_node_name("A CAT_1700000000000.PNG") == naming.NodeName("A CAT", 1_700_000_000_000)
    assert naming.parse_node_name("a cat\non a mat_1700000000000.jpeg") == naming.NodeName("a cat\non a mat", 1_700_000_000_000)


def test_a_timestamp_outside_the_scheme_makes_no_name():
    # One past MAX_TS would write a negative inverse, "-000000000001", and list first forever.
    for ts in (-1, MAX_TS + 1):
        with pytest.raises(ValueError):
            naming.name_for("a cat", ts)
