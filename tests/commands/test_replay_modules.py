"""``ftwatch replay LOG --modules``: the table of the log's last ``modules`` event, one line when the
log has none, and exit 2 (one line) with an option it does not combine with.

Expected figures are computed here from the log lines (``json.loads``), not by ftwatch.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import FIXTURES_ROOT, run_cli
from views.test_modules_table import size3

LOGS = FIXTURES_ROOT / "logs"
LOG = LOGS / "modules-tiny" / "events.jsonl"
CELL = re.compile(r"\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB)|<1%|\d+%|(?<= )-(?= |$)")
CATEGORIES = ("weights", "lora", "grads", "optimizer", "activations")


def replay(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m ftwatch replay ARGS`` (stdout is a pipe: never the dashboard)."""
    return run_cli("replay", *args, timeout=120)


def row(text: str, label: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith(label + " "):
            return CELL.findall(line[len(label):])
    raise AssertionError(f"no row {label!r} in:\n{text}")


def test_the_table_is_the_logs_last_modules_event_and_its_totals_are_the_snapshots(tmp_path: Path) -> None:
    events = [json.loads(line) for line in LOG.read_text().splitlines()]
    # A second, later event (another measured step, activations doubled): the table is the last one.
    first = next(e for e in events if e["kind"] == "modules")
    later = json.loads(json.dumps(first))
    later["step"], later["t"] = 3, first["t"] + 2
    for layer in later["layers"]:
        layer["bytes"]["activations"] *= 2
    log = tmp_path / "events.jsonl"
    lines = LOG.read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"kind":"snapshot"' in line and '"step":3,' in line)
    log.write_text("".join(lines[:cut + 1]) + json.dumps(later) + "\n" + "".join(lines[cut + 1:]))
    result = replay(str(log), "--modules")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "measured at step 3 (training)" in text
    snapshot = next(e for e in events if e["kind"] == "snapshot" and e.get("step") == 1)
    totals = snapshot["categories"]  # the first event's totals are the snapshot's categories of its step
    whole = sum(totals[c] for c in CATEGORIES)
    assert row(text, "all") == [*(size3(totals[c]) for c in CATEGORIES), size3(whole), "100%"]
    for layer in later["layers"]:
        total = sum(layer["bytes"].values())
        assert row(text, f"layer {layer['index']}")[5] == size3(total)
        assert layer["bytes"]["activations"] == 2 * first["layers"][layer["index"]]["bytes"]["activations"]
    assert max(len(line) for line in text.splitlines()) <= 80  # a pipe: 80 columns
    assert "\nAdvice\n" in text


def test_columns_follow_the_terminal_width() -> None:
    import os
    import sys

    env = dict(os.environ, COLUMNS="60", PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "-m", "ftwatch", "replay", str(LOG), "--modules"], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 60


@pytest.mark.parametrize("name", ["cpu-finished", "cuda-oom-loading"])
def test_a_log_without_modules_says_why_in_one_line(name: str) -> None:
    result = replay(str(LOGS / name), "--modules")
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftwatch replay: no module figures: "), result.stderr
    if name == "cpu-finished":  # trained 60 steps without one
        assert "module attribution is off ([monitor] modules)" in lines[0]
    else:  # out of memory while loading: no training step
        assert "before its first measured training step" in lines[0]


def test_a_multi_process_run_shows_its_worst_rank() -> None:
    result = replay(str(LOGS / "ddp-finished"), "--modules")
    assert result.stdout.startswith("rank ") and "--rank N for another" in result.stdout
    assert result.returncode == 1 and "no module figures" in result.stderr


@pytest.mark.parametrize("option", [["--json"], ["--csv"], ["--plot"], ["--speed", "2"]])
def test_modules_with_another_output_is_one_line_and_exit_2(option: list[str]) -> None:
    result = replay(str(LOG), "--modules", *option)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftwatch replay: --modules "), result.stderr
    assert option[0] in lines[0] and "Traceback" not in result.stderr


def test_names_in_a_crafted_log_reach_the_terminal_clean(tmp_path: Path) -> None:
    log = tmp_path / "run" / "events.jsonl"
    log.parent.mkdir()
    shutil.copy(LOG, log)
    lines = log.read_text().splitlines()
    for i, line in enumerate(lines):
        event = json.loads(line)
        if event["kind"] == "modules":
            event["blocks"][0]["name"] = "emb\x1b]52;c;cHduZWQ=\x07\x1b[2Jed"
            event["context"]["dtype"] = "\x1b[31mfloat32\u202e"
            lines[i] = json.dumps(event)
    log.write_text("\n".join(lines) + "\n")
    result = replay(str(log.parent), "--modules")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\u202e" not in result.stdout
    assert "embed" in result.stdout and "float32" in result.stdout
