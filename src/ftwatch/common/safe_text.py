"""Text that is safe to put on a terminal: the one place control characters are taken out.

Every string that reaches a terminal from somewhere ftwatch does not control (a run log, the
registry, a config file, a worker's output, another user's process) goes through here first, so a
crafted log cannot retitle the terminal, clear the screen or set the clipboard (OSC 52). Escape
sequences are removed whole (not just their ESC), other C0/C1 controls and DEL are dropped; a
carriage return keeps what a terminal would show (the text after the last one).

It imports nothing of ftwatch and nothing heavy: every layer may use it.
"""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Any

#: ANSI/VT escape sequences: CSI (``ESC [``), OSC (``ESC ]`` .. BEL or ST), DCS/PM/APC/SOS strings,
#: and two-character escapes; the C1 forms (U+009B CSI, U+009D OSC, ...) too.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI ... final byte
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC/DCS/SOS/PM/APC
    r"|\x1b[ -/]*[0-~]"  # other escapes (ESC c, ESC 7, ESC ( B, ...)
)
#: Bidirectional controls (RLO, LRI, ...): they reorder what a terminal shows ("Trojan source").
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
#: What is left to drop: C0 controls but tab and newline, DEL, C1 controls, bidi controls.
_CONTROLS = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")
#: The same with tab and newline: for text that must stay on one line.
_CONTROLS_ONE_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
#: Any character that makes a string need cleaning (a fast check before the regexes).
_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")


def safe(text: str, *, one_line: bool = False) -> str:
    """``text`` without escape sequences or control characters.

    Newlines and tabs are kept unless ``one_line`` (then each becomes a space). A carriage return
    keeps only what follows the last one on its line, as a terminal shows it.
    """
    if not isinstance(text, str):
        text = str(text)
    if _UNSAFE.search(text) is None and not (one_line and ("\n" in text or "\t" in text)):
        return text
    if "\r" in text:
        text = "\n".join(_after_carriage_return(line) for line in text.split("\n"))
    text = _ESCAPES.sub("", text)
    if one_line:
        return _CONTROLS_ONE_LINE.sub(lambda m: " " if m.group() in "\n\t" else "", text)
    return _CONTROLS.sub("", text)


def _after_carriage_return(line: str) -> str:
    stripped = line.rstrip("\r")
    return stripped.rsplit("\r", 1)[-1]


def needs_cleaning(text: str) -> bool:
    """True when :func:`safe` would change ``text`` (multi-line form)."""
    return _UNSAFE.search(text) is not None


def safe_value(value: Any) -> Any:
    """``value`` (a decoded JSON value) with every string in it, keys included, made :func:`safe`."""
    if isinstance(value, str):
        return safe(value)
    if isinstance(value, dict):
        return {safe(k) if isinstance(k, str) else k: safe_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [safe_value(v) for v in value]
    return value


def say(message: str) -> None:
    """One line ``ftwatch: message`` (made :func:`safe`) on this process's stderr; never raises:
    stderr may be a file on a full disk, or closed, and the caller may be the training loop."""
    with contextlib.suppress(Exception):
        stream = sys.stderr
        if stream is not None:
            stream.write(f"ftwatch: {safe(message, one_line=True)}\n")
            stream.flush()
