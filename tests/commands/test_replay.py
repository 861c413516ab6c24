"""``ftwatch replay`` on damaged, foreign and unusual logs, its ``--csv`` and ``--plot`` outputs, and a
replay of a real run of the bundled example checked against the summary the live run printed.

Expected figures are computed here from the log lines themselves (``json.loads``), not by ftwatch.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, REPO, run_cli
from ftwatch.runlog.events import TENSOR_CATEGORIES, encode
from ftwatch.views.dashboard.demo import synthetic_lines

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def write_log(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def replay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m ftwatch replay ARGS`` (stdout is a pipe: never the dashboard)."""
    if env is None:
        return run_cli("replay", *args, timeout=120)
    return subprocess.run([sys.executable, "-m", "ftwatch", "replay", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


def replay_json(*args: str) -> dict:
    result = replay(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def parsed(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *pieces: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftwatch replay: "), result.stderr
    assert "Traceback" not in result.stderr
    for piece in pieces:
        assert piece in lines[0], lines[0]


def without_log(summary: dict) -> dict:
    """A summary less what is of the file rather than the run (its path, what was skipped)."""
    return {k: v for k, v in summary.items() if k not in ("log", "run_log")}


# -- damaged logs ---------------------------------------------------------------------------------
def test_a_log_cut_mid_line_is_read_up_to_the_cut(tmp_path: Path) -> None:
    lines = synthetic_lines("cpu", steps=40)
    text = "".join(lines)
    cut = len("".join(lines[:150])) + len(lines[150]) // 2  # the process was killed while writing line 150
    log = tmp_path / "events.jsonl"
    log.write_text(text[:cut])
    complete = parsed(lines[:150])
    summary = replay_json(str(log))
    assert summary["log"] == {"events": 150, "corrupt_lines": 0, "unknown_kinds": 0, "truncated_tail": True,
                              "unknown_kind_names": [], "invalid_events": 0, "invalid_fields": [], "long_lines": 0}
    assert summary["status"] == "failed"  # no exit event: the process was killed
    assert any("without an exit event" in note for note in summary["notes"])
    steps = [e["step"] for e in complete if e["kind"] == "snapshot" and e.get("step") is not None]
    assert summary["steps"] == steps[-1]
    report = replay(str(log), "--headless")
    assert report.returncode == 0 and "last line cut off" in report.stdout
    first, why = report.stdout.splitlines()[:2]  # nothing in the log says it failed, nor how it ended
    assert first.startswith(f"no exit event after {steps[-1]} steps") and "the log was cut" in why


def test_corrupt_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    lines = synthetic_lines("cuda", steps=20)
    clean = write_log(tmp_path / "clean" / "events.jsonl", lines)
    damaged = lines[:40] + ["not json at all\n"] + lines[40:90] + ["[1, 2, 3]\n", lines[90][:25] + "\n"] + lines[90:]
    log = write_log(tmp_path / "damaged" / "events.jsonl", damaged)
    summary = replay_json(str(log))
    assert summary["log"]["corrupt_lines"] == 3 and summary["log"]["events"] == len(lines)
    assert not summary["log"]["truncated_tail"]
    assert without_log(summary) == without_log(replay_json(str(clean)))
    report = replay(str(log), "--headless").stdout
    assert "log: 3 corrupt lines skipped, 0 events of unknown kinds skipped" in report


def test_unknown_kinds_from_a_newer_version_are_skipped_counted_and_shown(tmp_path: Path) -> None:
    lines = synthetic_lines("cpu", steps=20)
    t = json.loads(lines[30])["t"]
    newer = [encode("topology", {"links": [[0, 1]]}, t), encode("hologram", {"x": 1}, t)]
    log = write_log(tmp_path / "events.jsonl", lines[:30] + newer + lines[30:] + [encode("hologram", {}, t)])
    summary = replay_json(str(log))
    assert summary["log"]["unknown_kinds"] == 3
    assert summary["log"]["unknown_kind_names"] == ["hologram", "topology"]
    assert summary["log"]["events"] == len(lines) and summary["log"]["corrupt_lines"] == 0
    assert summary["status"] == "finished"
    report = replay(str(log), "--headless").stdout
    assert "3 events of unknown kinds skipped" in report and "hologram, topology" in report


def test_an_unknown_kind_on_a_last_line_without_newline_is_not_a_cut_line(tmp_path: Path) -> None:
    lines = synthetic_lines("cpu", steps=5)
    log = write_log(tmp_path / "events.jsonl", lines + [encode("hologram", {}, 1.0).rstrip("\n")])
    summary = replay_json(str(log))
    assert summary["log"]["unknown_kinds"] == 1
    assert summary["log"]["corrupt_lines"] == 0 and not summary["log"]["truncated_tail"]


# -- logs that cannot be replayed -----------------------------------------------------------------
@pytest.mark.parametrize("mode", [[], ["--json"], ["--csv"], ["--plot"]])
def test_another_schema_version_is_refused_clearly(tmp_path: Path, mode: list[str]) -> None:
    header = json.loads(synthetic_lines("cpu")[0])
    header["v"] = 2
    log = write_log(tmp_path / "events.jsonl", [json.dumps(header) + "\n"] + synthetic_lines("cpu")[1:])
    assert_one_line_error(replay(str(log), *mode), "schema v2", "reads v1")


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
@pytest.mark.parametrize("mode", [[], ["--json"], ["--csv"], ["--plot"]])
def test_an_empty_log_is_refused_clearly(tmp_path: Path, content: str, mode: list[str]) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text(content)
    assert_one_line_error(replay(str(log), *mode), str(log), "empty")


def test_a_log_of_garbage_says_what_it_skipped(tmp_path: Path) -> None:
    log = write_log(tmp_path / "events.jsonl", ["garbage\n", "{\"kind\": 1}\n", encode("hologram", {}, 1.0)])
    assert_one_line_error(replay(str(log), "--json"), "not an ftwatch run log", "no valid event", "2 corrupt lines",
                          "1 event of unknown kind")


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(replay(str(tmp_path / "nope.jsonl")), "no such file", "nope.jsonl")
    assert_one_line_error(replay(str(tmp_path / "nope.jsonl"), "--csv"), "no such file")


def test_a_directory_without_a_log_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(replay(str(tmp_path)), "directory without an events.jsonl")


@pytest.mark.parametrize("speed", ["0", "-3", "fast", "nan"])
def test_a_bad_speed_is_a_usage_error(tmp_path: Path, speed: str) -> None:
    log = write_log(tmp_path / "events.jsonl", synthetic_lines("cpu", steps=3))
    result = replay(str(log), "--speed", speed)
    assert result.returncode == 2 and "--speed" in result.stderr and "Traceback" not in result.stderr


# -- where the log is -----------------------------------------------------------------------------
def test_a_run_directory_stands_for_its_events_jsonl(tmp_path: Path) -> None:
    run = tmp_path / "run-1"
    write_log(run / "events.jsonl", synthetic_lines("cuda", steps=12))
    (run / "worker.log").write_text("hello\n")
    by_dir, by_file = replay_json(str(run)), replay_json(str(run / "events.jsonl"))
    assert by_dir == by_file and by_dir["steps"] == 12
    assert replay(str(run), "--csv").stdout == replay(str(run / "events.jsonl"), "--csv").stdout


def test_gzip_logs_replay_like_plain_ones(tmp_path: Path) -> None:
    lines = synthetic_lines("cuda", steps=15, ending="oom")
    plain = write_log(tmp_path / "plain" / "events.jsonl", lines)
    packed = tmp_path / "packed" / "events.jsonl.gz"
    packed.parent.mkdir()
    with gzip.open(packed, "wt") as handle:
        handle.write("".join(lines))
    summary = replay_json(str(packed))
    assert without_log(summary) == without_log(replay_json(str(plain))) and summary["run_log"] == str(packed)
    assert summary["status"] == "oom"
    assert replay_json(str(packed.parent)) == summary  # a run directory holding events.jsonl.gz
    assert replay(str(packed), "--csv").stdout == replay(str(plain), "--csv").stdout


def test_a_damaged_gzip_is_one_line(tmp_path: Path) -> None:
    packed = tmp_path / "events.jsonl.gz"
    packed.write_bytes(b"\x1f\x8b\x08\x00garbage that is not deflate")
    assert_one_line_error(replay(str(packed), "--json"), "cannot read it")


# -- --csv ------------------------------------------------------------------------------------------
def expected_rows(events: list[dict]) -> list[dict[str, str]]:
    """The CSV rows, computed here: per sample, the latest snapshot's tensor figures then."""
    rows, cats, step, first_t = [], {}, None, events[0]["t"]
    for e in events:
        if e["kind"] == "snapshot":
            cats = e["categories"]
            step = e["step"] if e.get("step") is not None else step
        if e["kind"] == "sample":
            row = {"t": repr(float(e["t"])), "step": "" if step is None else str(step), "rss": str(e["rss"]),
                   "allocated": str(e["cuda"]["allocated"]), "nvml_process": str(e["nvml"]["process"]),
                   "elapsed": e["t"] - first_t}
            row.update({c: str(cats[c]) if c in cats else "" for c in TENSOR_CATEGORIES})
            rows.append(row)
    return rows


def test_csv_has_one_row_per_sample_with_the_breakdown_of_that_time(tmp_path: Path) -> None:
    lines = synthetic_lines("cuda", steps=25)
    log = write_log(tmp_path / "events.jsonl", lines)
    result = replay(str(log), "--csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    expected = expected_rows(parsed(lines))
    assert len(rows) == len(expected) == sum('"kind":"sample"' in line for line in lines)
    assert list(rows[0]) == ["t", "elapsed", "phase", "step", *TENSOR_CATEGORIES, "rss", "allocated", "reserved",
                             "nvml_used", "nvml_process"]
    for row, want in zip(rows, expected, strict=True):
        for key in ("t", "step", "rss", "allocated", "nvml_process", *TENSOR_CATEGORIES):
            assert row[key] == want[key], (key, row, want)
        assert float(row["elapsed"]) == pytest.approx(want["elapsed"], abs=1e-3)
    assert rows[0]["weights"] == "" and rows[-1]["activations"] != ""  # no breakdown before the first snapshot
    assert {r["phase"] for r in rows} >= {"loading_model", "training"}


def test_csv_of_a_cpu_run_leaves_the_cuda_columns_empty(tmp_path: Path) -> None:
    log = write_log(tmp_path / "events.jsonl", synthetic_lines("cpu", steps=5))
    rows = list(csv.DictReader(io.StringIO(replay(str(log), "--csv").stdout)))
    assert rows and all(r["allocated"] == r["nvml_used"] == "" and int(r["rss"]) > 0 for r in rows)


# -- --plot -----------------------------------------------------------------------------------------
def plot_env(**sizes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env.update(sizes)
    return env


def test_plot_piped_has_a_default_size_and_no_colour_codes(tmp_path: Path) -> None:
    log = write_log(tmp_path / "events.jsonl", synthetic_lines("cuda", steps=30))
    result = replay(str(log), "--plot", env=plot_env())
    assert result.returncode == 0, result.stderr
    rows = result.stdout.rstrip("\n").splitlines()
    assert not ANSI.search(result.stdout)
    assert max(len(r) for r in rows) == 100 and 12 <= len(rows) <= 32
    assert "llama8b-lora: memory over the run (finished, 30 steps)" in result.stdout
    for label in ("process", "weights", "activations", "other procs"):
        assert label in result.stdout
    assert "free" not in result.stdout


@pytest.mark.parametrize("columns", [60, 140])
def test_plot_respects_the_terminal_width(tmp_path: Path, columns: int) -> None:
    log = write_log(tmp_path / "events.jsonl", synthetic_lines("cpu", steps=30))
    result = replay(str(log), "--plot", env=plot_env(COLUMNS=str(columns), LINES="20"))
    rows = result.stdout.rstrip("\n").splitlines()
    assert max(len(r) for r in rows) == columns and len(rows) <= 20


# -- a real run of the bundled example --------------------------------------------------------------
def example_copy(tmp_path: Path, max_steps: int) -> Path:
    """``examples/tiny-lora.toml`` with absolute paths, a private log directory and few steps."""
    text = (EXAMPLES / "tiny-lora.toml").read_text()
    swaps = [(r'(?m)^name = "tiny-llama"', f'name = "{EXAMPLES / "tiny-llama"}"'),
             (r'(?m)^path = "data/field-notes.jsonl"', f'path = "{EXAMPLES / "data" / "field-notes.jsonl"}"'),
             (r"(?m)^max_steps = \d+", f"max_steps = {max_steps}"),
             (r'(?m)^log_dir = "ftwatch-runs"', f'log_dir = "{tmp_path / "runs"}"')]
    for pattern, replacement in swaps:
        text, count = re.subn(pattern, replacement.replace("\\", "\\\\"), text)
        assert count == 1, pattern
    config = tmp_path / "tiny-lora.toml"
    config.write_text(text)
    return config


@pytest.mark.slow
def test_replay_of_a_recorded_example_run_matches_the_live_summary(tmp_path: Path) -> None:
    config = example_copy(tmp_path, max_steps=5)
    live = run_cli("run", str(config), "--headless", "--json", timeout=600)
    assert live.returncode == 0, live.stderr[-3000:]
    live_summary = json.loads(live.stdout)
    run_dir = next((tmp_path / "runs").iterdir())
    log = run_dir / "events.jsonl"
    replayed = replay_json(str(run_dir))
    assert replayed["log"]["corrupt_lines"] == 0 and not replayed["log"]["truncated_tail"]
    ignore = {"elapsed_seconds", "log"}
    assert {k: v for k, v in replayed.items() if k not in ignore} == \
        {k: v for k, v in live_summary.items() if k not in ignore}
    assert live_summary["status"] == "finished" and live_summary["steps"] == 5

    samples = 0
    with log.open() as handle:
        for line in handle:
            samples += json.loads(line)["kind"] == "sample"
    rows = list(csv.DictReader(io.StringIO(replay(str(log), "--csv").stdout)))
    assert samples > 0 and len(rows) == samples
    last_weights = {r["weights"] for r in rows if r["step"] == "5"}
    assert last_weights == {str(live_summary["peak_bytes"]["weights"])}  # frozen weights: constant


def test_replay_module_is_importable_without_textual_side_effects() -> None:
    """--csv/--json/--plot never need the dashboard: the command module does not import textual."""
    code = "import sys, ftwatch.commands.replay; print('textual' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_plot_size_follows_the_terminal_with_a_capped_height(monkeypatch: pytest.MonkeyPatch) -> None:
    from ftwatch.views.dashboard.replay_plot import plot_size

    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback: os.terminal_size((90, 40)))
    monkeypatch.setenv("COLUMNS", "90")
    monkeypatch.setenv("LINES", "40")
    assert plot_size(io.StringIO()) == (90, 30)


def test_plot_on_a_terminal_is_in_colour_at_the_given_size() -> None:
    from ftwatch.runlog.state import RunState
    from ftwatch.views.dashboard.replay_plot import plot_text

    state = RunState()
    state.apply_all(parsed(synthetic_lines("cuda", steps=20)))
    text = plot_text(state, 70, 18, colour=True)
    assert ANSI.search(text)
    rows = ANSI.sub("", text).splitlines()
    assert max(len(r) for r in rows) == 70 and len(rows) <= 18


def test_replay_of_a_run_still_going_points_to_attach(tmp_path):
    from conftest import run_cli
    from ftwatch.runlog import registry
    from ftwatch.runlog.events import encode

    run = tmp_path / "live-run"
    run.mkdir()
    (run / "events.jsonl").write_text(
        encode("header", {"name": "live", "pid": os.getpid(), "device": {"type": "cpu", "capacity": 1 << 30}}, t=1)
        + encode("phase", {"name": "training"}, t=2))
    registry.register(os.getpid(), run, "live")  # this test process stands for the training process
    result = run_cli("replay", str(run), "--json")
    assert result.returncode == 0, result.stderr
    notes = json.loads(result.stdout)["notes"]
    assert f"watch it live with ftwatch attach {os.getpid()}" in " ".join(notes)


# -- events whose fields do not fit (issue 10) ----------------------------------------------------
def test_events_with_fields_of_the_wrong_type_are_counted_as_corrupt_and_named(tmp_path: Path) -> None:
    lines = synthetic_lines("cuda", steps=20)
    events = parsed(lines)
    snap = next(i for i, e in enumerate(events) if e["kind"] == "snapshot" and e.get("step"))
    sample = next(i for i, e in enumerate(events) if e["kind"] == "sample")
    broken = list(lines)
    broken[snap] = json.dumps({**events[snap], "loss": "low"}) + "\n"
    broken[sample] = json.dumps({**events[sample], "rss": 10**400}) + "\n"
    log = write_log(tmp_path / "events.jsonl", broken)
    summary = replay_json(str(log))
    assert summary["log"]["corrupt_lines"] == 2 and summary["log"]["invalid_events"] == 2
    assert summary["log"]["invalid_fields"] == ["sample.rss", "snapshot.loss"]
    assert summary["log"]["events"] == len(lines) - 2
    report = replay(str(log), "--headless").stdout
    assert "log: 2 corrupt lines skipped (2 with fields of the wrong type: sample.rss, snapshot.loss)" in report


def test_a_log_of_only_broken_events_is_not_a_run_log(tmp_path: Path) -> None:
    lines = [json.dumps({**e, "t": "later"}) + "\n" for e in parsed(synthetic_lines("cpu", steps=3))]
    log = write_log(tmp_path / "events.jsonl", lines)
    assert_one_line_error(replay(str(log), "--json"), "not an ftwatch run log", "wrong type", "header.t")
