"""Words a new user reads first, checked against what they describe: the top-level help of
``attach`` names both things it accepts, the per-rank table of a multi-process replay labels the
process's memory with the process's memory (read here from the raw rank logs), and an estimate's
base-weight fixes say their saving is of the full model (more than a run that died while loading
held)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import EXAMPLES, FIXTURES_ROOT
from ftwatch.common.units import format_bytes
from fuzzkit import cli

DDP = FIXTURES_ROOT / "logs" / "ddp-finished"
MiB = 1024**2


def test_top_level_help_says_attach_takes_a_pid_or_a_directory() -> None:
    listing = re.sub(r"\s+", " ", cli("--help").stdout)
    line = re.search(r"attach (.*?) ls ", listing)
    assert line is not None, listing
    assert "PID" in line.group(1) and "directory" in line.group(1)
    # ... as the command's own argument does
    assert "PID|DIR" in cli("attach", "--help").stdout


def _raw_peaks(events: Path) -> tuple[int, int]:
    """(peak RSS of the samples, peak sum of the tensor categories of the snapshots), from the JSON lines."""
    rss, tensors = 0, 0
    for line in events.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("kind") == "sample" and event.get("rss") is not None:
            rss = max(rss, int(event["rss"]))
        if event.get("kind") == "snapshot":
            cats = event.get("categories") or {}
            tensors = max(tensors, sum(int(v or 0) for k, v in cats.items()
                                       if k in ("weights", "lora", "grads", "optimizer", "activations")))
    return rss, tensors


def test_the_rank_table_of_a_cpu_ddp_replay_shows_the_process_memory() -> None:
    outcome = cli("replay", str(DDP), "--headless")
    assert outcome.code == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    header = next(line for line in lines if "peak process" in line)
    assert header.split() == ["rank", "status", "step", "peak", "tensors", "peak", "process", "device"]
    for rank in (0, 1):
        rss, tensors = _raw_peaks(DDP / f"rank{rank}" / "events.jsonl")
        assert rss > 100 * MiB > tensors > 0  # a CPU process holds far more than its tensors
        row = next(line for line in lines if line.split()[:2] == [str(rank), "finished"])
        process = re.findall(r"\d+(?:\.\d+)? [KMG]?i?B", row)[-1]
        assert process == format_bytes(rss), row


def test_base_weight_fixes_say_their_saving_is_of_the_full_model() -> None:
    from ftwatch.analysis.advice import FULL_MODEL, estimate_and_advise, suggest_for_measured
    from ftwatch.common.config import load_config

    cfg = load_config(EXAMPLES / "tiny-lora.toml")
    result = estimate_and_advise(cfg, 2 * MiB, on_gpu=True)  # does not fit, and 4-bit is on offer on a GPU
    by_setting = {s.config: s for s in result.suggestions}
    four_bit = by_setting.get("[model] load_in_4bit = true")
    assert four_bit is not None, sorted(by_setting)
    assert four_bit.change.endswith(f"; {FULL_MODEL})"), four_bit.change
    for s in result.suggestions:
        touches_weights = any(section == "model" for section, _key, _value in s.settings)
        assert (FULL_MODEL in s.change) == touches_weights, s.change

    # priced on a measured breakdown, the saving is of what was held: no such words
    measured = {"weights": 600 * 1024, "lora": 16 * 1024, "activations": 2 * MiB}
    fixes = suggest_for_measured(result.inputs, measured, 2 * MiB)
    assert fixes and not any(FULL_MODEL in s.change for s in fixes)


@pytest.mark.parametrize(("change", "joined", "expected"), [
    ("load in 4-bit (QLoRA)", False, "load in 4-bit (QLoRA; the saving is of the full model)"),
    ("load in 8-bit", False, "load in 8-bit (the saving is of the full model)"),
    ("together: a (x); b", True, "together: a (x); b; the saving is of the full model"),
])
def test_the_full_model_words_fit_the_change_text(change: str, joined: bool, expected: str) -> None:
    from ftwatch.analysis.advice import of_full_model

    assert of_full_model(change, joined=joined) == expected
