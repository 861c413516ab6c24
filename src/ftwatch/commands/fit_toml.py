"""Rewrite a TOML config in place: only the given keys change (or are added), every other byte stays.

The result is parsed again and compared with the original table plus the settings: a config whose
layout this line editor cannot follow (dotted keys, inline tables) is refused, never half-edited.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib  # type: ignore[no-redef]

Setting = tuple[str, str, Any]

_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\"' -]+?)\s*\]\s*(#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")


def toml_value(value: Any) -> str:
    """A value as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def setting_line(setting: Setting) -> str:
    """``[section] key = value``."""
    section, key, value = setting
    return f"[{section}] {key} = {toml_value(value)}"


def _comment(rest: str) -> str:
    """The trailing comment of a ``key = value  # comment`` line's value part, with its spacing."""
    for at in [m.start() for m in re.finditer("#", rest)]:
        try:
            tomllib.loads("x = " + rest[:at])
        except tomllib.TOMLDecodeError:
            continue
        value = rest[:at].rstrip()
        return rest[len(value):]
    return ""


def edit(text: str, settings: Sequence[Setting]) -> tuple[str, list[tuple[str | None, str]]]:
    """``text`` with each setting written; and the diff, ``(old_line or None, new_line)`` per setting.

    Raises ``ValueError`` when the result would not parse to the original plus the settings.
    """
    lines = text.splitlines(keepends=True)
    diff: list[tuple[str | None, str]] = []
    for section, key, value in settings:
        new = f"{key} = {toml_value(value)}"
        start, end = _section(lines, section)
        if start is None:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines += ["\n", f"[{section}]\n", new + "\n"]
            diff.append((None, f"[{section}] {new}"))
            continue
        key_line = re.compile(rf"^(\s*){re.escape(key)}\s*=(.*?)(\r?\n)?$")
        for n in range(start + 1, end):
            match = key_line.match(lines[n])
            if match:
                indent, rest, eol = match.group(1), match.group(2), match.group(3) or ""
                diff.append((f"[{section}] {lines[n].strip()}", f"[{section}] {new}"))
                lines[n] = f"{indent}{new}{_comment(rest)}{eol}"
                break
        else:
            at = end
            while at - 1 > start and not lines[at - 1].strip():
                at -= 1
            if not lines[at - 1].endswith("\n"):
                lines[at - 1] += "\n"
            lines.insert(at, new + "\n")
            diff.append((None, f"[{section}] {new}"))
    out = "".join(lines)
    _verify(text, out, settings)
    return out, diff


def _section(lines: list[str], section: str) -> tuple[int | None, int]:
    """``(header_index, end_index)`` of ``[section]`` (``None`` when it has no header)."""
    for n, line in enumerate(lines):
        match = _HEADER.match(line.rstrip("\r\n"))
        if match and match.group(1).strip() == section:
            end = next((m for m in range(n + 1, len(lines)) if _ANY_HEADER.match(lines[m])), len(lines))
            return n, end
    return None, len(lines)


def _verify(before: str, after: str, settings: Sequence[Setting]) -> None:
    expected = tomllib.loads(before)
    for section, key, value in settings:
        expected.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    try:
        got = tomllib.loads(after)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"the rewritten config would not parse ({exc})") from None
    if got != expected:
        raise ValueError("its layout (dotted keys or inline tables) cannot be rewritten line by line")
