"""The headless report's phases section for runs whose probe started late: a ``FtwatchCallback``
run (header ``origin: callback``) logs no loading_model or applying_lora phase; the report says they
ran before the callback started rather than leaving them out."""

from __future__ import annotations

import json
from pathlib import Path

from test_worker_tail_callback import cpu_header

from ftwatch.runlog.events import encode
from ftwatch.runlog.phases import unwatched_phases
from ftwatch.runlog.state import PhaseRecord, RunState
from ftwatch.views.dashboard.widgets import phases as dashboard_phases
from ftwatch.views.headless.report import summary_text
from fuzzkit import cli

MiB = 1 << 20
CATS = {"weights": 650_000, "lora": 16_384, "grads": 16_384, "optimizer": 32_768, "activations": 2 * MiB}
BEFORE = "before the callback started (not watched)"


def run_lines(origin: str | None, phases: tuple[str, ...], t0: float = 1000.0) -> list[str]:
    """A finished CPU run of two steps whose log records ``phases`` in order."""
    header = cpu_header("rp0123456789", origin)
    lines = [encode("header", header, t0)]
    t = t0
    for name in phases:
        t += 0.5
        lines.append(encode("phase", {"name": name, **({"max_steps": 2} if name == "training" else {})}, t))
        lines.append(encode("sample", {"phase": name, "rss": 900 * MiB}, t + 0.1))
    for step in (1, 2):
        t += 1.0
        lines.append(encode("snapshot", {"phase": "training", "step": step, "loss": 2.0, "categories": CATS}, t))
    lines.append(encode("exit", {"status": "finished", "step": 2}, t + 0.1))
    return lines


def phase_section(text: str) -> list[str]:
    """The report's lines from the phases heading to the next unindented line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("phases ("))
    section = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        section.append(line.split())
    return section


def state_of(lines: list[str]) -> RunState:
    state = RunState()
    state.apply_all([json.loads(line) for line in lines])
    return state


def test_one_rule_for_the_dashboard_and_the_report() -> None:
    assert dashboard_phases.unwatched_phases is unwatched_phases  # moved, not copied

    def record(name: str) -> PhaseRecord:
        return PhaseRecord(name=name, start_t=0.0)

    assert unwatched_phases([record("training")]) == {"loading_model", "applying_lora", "preparing_trainer"}
    assert unwatched_phases([record("custom"), record("training")]) == set()


def test_a_callback_run_reports_loading_and_lora_as_before_the_callback() -> None:
    text = summary_text(state_of(run_lines("callback", ("preparing_trainer", "training"))))
    section = phase_section(text)
    assert [row[0] for row in section] == ["loading_model", "applying_lora", "preparing_trainer", "training"]
    for row in section[:2]:
        assert " ".join(row[1:]) == BEFORE
    for row in section[2:]:
        assert row[1] == "peak" and "added" in row  # the watched phases keep their figures
    assert text.count(BEFORE) == 2


def test_a_worker_run_with_every_phase_says_nothing_unwatched() -> None:
    text = summary_text(state_of(run_lines("worker", ("loading_model", "applying_lora", "preparing_trainer",
                                                      "training"))))
    assert "not watched" not in text
    assert [row[0] for row in phase_section(text)] == ["loading_model", "applying_lora", "preparing_trainer",
                                                       "training"]


def test_another_origin_says_not_watched_only() -> None:
    section = phase_section(summary_text(state_of(run_lines(None, ("training",)))))
    assert [row[0] for row in section] == ["loading_model", "applying_lora", "preparing_trainer", "training"]
    assert [" ".join(row[1:]) for row in section[:3]] == ["not watched"] * 3


def test_replay_headless_of_a_callback_log_prints_it(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text("\n".join(run_lines("callback", ("preparing_trainer", "training"))) + "\n")
    outcome = cli("replay", str(log), "--headless")
    assert outcome.code == 0, outcome.stderr
    shown = outcome.stdout + outcome.stderr
    assert f"loading_model      {BEFORE}" in shown and f"applying_lora      {BEFORE}" in shown
