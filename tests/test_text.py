from visionary.text import forbidden, shortened, visible, without_forbidden


def test_tabs_and_every_kind_of_line_break_are_text():
    lines = "a\tb\nc\r\nd\x85e\u2028f\u2029g"
    assert not any(forbidden(ch) for ch in lines) and without_forbidden(lines) == lines


def test_control_characters_and_lone_surrogates_are_not():
    assert without_forbidden("a\x00\x07\x1b[31m\x7f\x90\x9b31m\ud800\udfffb") == "a[31m31mb"
    assert not forbidden("\xa0") and not forbidden("é")  # no-break space and Latin-1 letters are text


def test_a_long_text_is_shortened_at_the_end_of_a_word():
    text = "A fox curled up in fresh snow, watercolor"
    assert shortened(text, 100) == text
    assert shortened(text, 21) == "A fox curled up in"  # "fresh" would be cut
    assert shortened(text, 29) == "A fox curled up in fresh snow"  # no trailing comma
    # A line break or tab where the cut falls is trimmed too, and ends a word as a space does.
    base = "A koi pond in autumn, ukiyo-e, linocut"
    assert shortened(base + ":\n- bold lines", 40) == base
    assert shortened(base + ",\t(bold lines)", 40) == base
    assert shortened(base + "\n\nBold lines", 41) == base
    assert shortened("Supercalifragilistic", 5) == "Super"  # one long word: cut inside it


def test_zero_width_and_direction_marks_alone_show_nothing():
    assert not visible("\u200b\ufeff \u202e\u2060\t")
    for blank in "\u3164\u115f\u1160\uffa0\u034f\u17b4\ufe0f\u2800\U000e0041\u180b":
        assert not visible(blank), hex(ord(blank))
    assert visible("\u200bcat\u200b") and visible("\u0301")  # a combining mark alone is drawn on a dotted circle
