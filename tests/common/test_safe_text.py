"""safe_text: what reaches a terminal from a log, the registry or a config, by hand-made cases."""

import pytest

from ftwatch.common.safe_text import safe, safe_value


@pytest.mark.parametrize(("raw", "shown"), [
    ("\x1b]0;pwned\x07title", "title"),            # OSC 0: set the window title
    ("\x1b]52;c;aGVsbG8=\x07clip", "clip"),        # OSC 52: set the clipboard
    ("\x1b[2J\x1b[Hclear", "clear"),               # CSI: clear the screen, home the cursor
    ("\x9b31mred", "red"),                         # C1 CSI
    ("\x9d0;t\x9cx", "x"),                         # C1 OSC ... ST
    ("bell\x07", "bell"),
    ("progress 10%\rprogress 90%", "progress 90%"),  # what a terminal would show after the CR
    ("evil\u202eexe.txt", "evilexe.txt"),          # right-to-left override ("Trojan source")
    ("a\u2066b\u2069c\u200fd", "abcd"),             # isolates and marks
    ("café 中 א", "café 中 א"),                      # ordinary text is untouched
])
def test_escapes_and_controls_go_and_text_stays(raw: str, shown: str) -> None:
    assert safe(raw) == shown


def test_one_line_turns_newlines_and_tabs_into_spaces_multi_line_keeps_them() -> None:
    assert safe("a\nb\tc", one_line=True) == "a b c"
    assert safe("a\nb\tc") == "a\nb\tc"


def test_every_string_of_a_decoded_value_keys_included() -> None:
    value = {"name\x1b[1m": ["\x1b]0;x\x07ok", 3, None, {"deep": "\u202ez"}]}
    assert safe_value(value) == {"name": ["ok", 3, None, {"deep": "z"}]}
