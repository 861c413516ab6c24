"""A crafted run log, or a crafted registry entry, cannot drive the user's terminal.

The log's model name, device name, note, warning, exit message and traceback (and a registry
entry's name and run directory) carry escape sequences: OSC 0 (window title), CSI 2J (clear the
screen), OSC 52 (set the clipboard), the one-byte C1 CSI (U+009B) and BEL. Each command runs on a
real pseudo-terminal, and the bytes the terminal receives must hold none of them: the payloads are
taken out whole (their text too, so the marker ``PWNED`` never shows). The dashboard writes escape
sequences of its own (CSI, and one OSC 22 for the pointer shape): there the check is for the
planted ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from conftest import REPO
from ftwatch.runlog import registry
from fuzzkit import cli

FIXTURE = REPO / "tests" / "fixtures" / "logs" / "cpu-finished" / "events.jsonl"

#: Title, clear screen, clear scrollback, clipboard, C1 CSI, bell: what a hostile log plants.
PAYLOAD = ("\x1b]0;PWNED-TITLE\x07\x1b[2J\x1b[3J\x1b]52;c;UFdORUQtQ0xJUA==\x07"
           "\x9b2J\x1b]0;PWNED-ST\x1b\\\x07")
#: What must never reach the terminal from it (bytes as the terminal gets them: UTF-8).
PLANTED = {
    "OSC 0 (title)": b"\x1b]0;",
    "OSC 52 (clipboard)": b"\x1b]52",
    "CSI 2J (clear screen)": b"\x1b[2J",
    "CSI 3J (clear scrollback)": b"\x1b[3J",
    "C1 CSI (UTF-8)": b"\xc2\x9b",
    "C1 CSI (raw byte)": b"\x9b",
    "the payload's text": b"PWNED",
}
#: The dashboard's own OSC (the pointer shape): taken out before looking for a planted BEL.
OWN_OSC = re.compile(rb"\x1b\]22;[^\x07\x1b]*\x07")


def crafted_log(path: Path) -> Path:
    """The recorded CPU run, with the payload in every string a viewer prints, ending failed."""
    lines = []
    for line in FIXTURE.read_text().splitlines():
        event = json.loads(line)
        if event["kind"] == "header":
            event["name"] = "tiny" + PAYLOAD
            event["model"] = "/models/tiny" + PAYLOAD
            event["device"]["name"] = "x86" + PAYLOAD
        if event["kind"] == "exit":
            t = event["t"]
            lines.append(json.dumps({"v": 1, "t": t - 1, "kind": "note", "code": "no_gpu",
                                     "message": "a note" + PAYLOAD}))
            lines.append(json.dumps({"v": 1, "t": t - 1, "kind": "warning", "code": "will_oom",
                                     "level": "danger", "step": 59, "message": "a warning" + PAYLOAD,
                                     "suggestions": [{"change": "a change" + PAYLOAD, "config": "x" + PAYLOAD,
                                                      "saves_bytes": 1}]}))
            event = {"v": 1, "t": t, "kind": "exit", "status": "failed", "step": 59, "by": "worker",
                     "error_type": "Boom" + PAYLOAD, "message": "Boom: exit" + PAYLOAD,
                     "traceback": "Traceback" + PAYLOAD + "\n  File x\nBoom: tb" + PAYLOAD, "suggestions": []}
        lines.append(json.dumps(event))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def on_terminal(args: list[str], *, cols: int = 80, rows: int = 24, quit_after: bytes | None = None,
                timeout: float = 30.0) -> bytes:
    """Everything ``ftwatch ARGS`` writes to a pseudo-terminal of ``cols`` x ``rows``; with
    ``quit_after``, ``q`` is typed once that text has been drawn."""
    env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows), PYTHONUNBUFFERED="1")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, on the terminal
        os.execve(sys.executable, [sys.executable, "-m", "ftwatch", *args], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    output = bytearray()
    deadline = time.monotonic() + timeout
    typed = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:  # the child closed the terminal (it exited)
                    break
                if not data:
                    break
                output.extend(data)
            if quit_after is not None and not typed and quit_after in _text(output):
                os.write(fd, b"q")
                typed = True
        else:
            raise AssertionError(f"ftwatch {' '.join(args)} did not end; it wrote {bytes(output[-2000:])!r}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(fd)
    return bytes(output)


def _text(output: bytes | bytearray) -> bytes:
    """The output without CSI sequences: the text a screen shows (for waiting on it)."""
    return re.sub(rb"\x1b\[[0-?]*[ -/]*[@-~]", b"", bytes(output))


def assert_nothing_planted(output: bytes, *, own_escapes: bool = False) -> None:
    found = {name: output.count(seq) for name, seq in PLANTED.items() if seq in output}
    assert found == {}, f"reached the terminal: {found}"
    rest = OWN_OSC.sub(b"", output) if own_escapes else output
    assert b"\x07" not in rest, "a BEL reached the terminal"
    if not own_escapes:  # a printer of plain text writes no escape sequence at all
        at = output.find(b"\x1b")
        assert at < 0, f"an escape reached the terminal: {output[at:at + 40]!r}"
    assert b"Traceback (most recent call last)" not in output


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return crafted_log(tmp_path / "run" / "events.jsonl")


def test_headless_replay(log):
    output = on_terminal(["replay", str(log), "--headless"])
    assert b"Boom: exit" in output and b"/models/tiny" in output and b"a warning" in output
    assert_nothing_planted(output)


def test_plot_title(log):
    output = on_terminal(["replay", str(log), "--plot"])
    assert b"tiny" in _text(output)
    assert_nothing_planted(output, own_escapes=b"\x1b[" in output)  # colours are the chart's own


def test_dashboard(log):
    output = on_terminal(["replay", str(log)], quit_after=b"FAILED")
    screen = _text(output)
    assert b"RUN FAILED" in screen and b"Boom:" in screen and b"tiny" in screen
    assert_nothing_planted(output, own_escapes=True)


def test_ls_of_a_crafted_registry_entry(tmp_path):
    run_dir = tmp_path / ("run" + PAYLOAD.replace("/", ""))
    crafted_log(run_dir / "events.jsonl")
    registry.register(os.getpid(), run_dir, "tiny" + PAYLOAD)  # this process: a live run
    output = on_terminal(["ls"], cols=200)
    assert str(os.getpid()).encode() in output and b"tiny" in output
    assert_nothing_planted(output)


def test_attach_pick_list_of_crafted_entries(tmp_path):
    """Two live crafted runs and no PID: the list attach prints to choose from is clean."""
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid, name in ((os.getpid(), "one"), (helper.pid, "two")):
            registry.register(pid, tmp_path / (name + PAYLOAD.replace("/", "")), name + PAYLOAD)
        outcome = cli("attach", "--headless")
    finally:
        helper.kill()
        helper.wait()
    printed = (outcome.stdout + outcome.stderr).encode()
    assert outcome.code == 2 and b"one" in printed and b"two" in printed, outcome
    assert_nothing_planted(printed)
