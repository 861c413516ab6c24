"""Foresight inside `ftwatch run`: the pre-flight estimate before loading, live warnings with
quantified fixes against a tight budget, and --strict refusing a run that will not fit."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from ftwatch.runlog.event_reader import read_events

pytestmark = pytest.mark.slow
MiB = 1024**2


def test_tight_budget_warns_with_quantified_fixes(tiny_config, tmp_path):
    # the bundled example peaks at about 3.2 MiB of tensors: 3.5 MiB leaves under 10% headroom
    config = tiny_config(training={"max_steps": 30}, monitor={"budget": "3.5MiB"})
    result = run_cli("run", str(config), "--headless", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["capacity_bytes"] == int(3.5 * MiB)
    live = [w for w in summary["warnings"] if w["code"] == "oom_risk"]
    assert live and live[0]["level"] in ("watch", "danger")
    assert live[0]["category"] == "activations"
    fixes = live[0]["suggestions"]
    assert fixes, "a warning comes with fixes"
    assert all(f["config"] and f["saves_bytes"] > 0 for f in fixes)
    assert any("gradient_checkpointing = true" in f["config"] for f in fixes)
    # the fixes are priced on the measured breakdown: none saves more than the run uses
    assert max(f["saves_bytes"] for f in fixes) < summary["peak_bytes"]["total"]
    assert summary["estimate"]["verdict"] in ("tight", "does_not_fit")
    assert "WARNING [watch]" in result.stderr or "WARNING [danger]" in result.stderr


def test_preflight_estimate_is_logged_before_loading(tiny_config, tmp_path):
    result = run_cli("run", str(tiny_config(training={"max_steps": 2})), "--headless", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    events = list(read_events(next((tmp_path / "runs").iterdir())))
    kinds = [e["kind"] for e in events]
    assert kinds.index("estimate") < kinds.index("phase")
    estimate = events[kinds.index("estimate")]
    summary = json.loads(result.stdout)
    for category in ("weights", "lora", "grads", "optimizer"):  # the estimate is exact for these
        assert estimate["estimate_bytes"][category] == summary["peak_bytes"][category]
    assert estimate["verdict"] == "fits"


def test_strict_refuses_a_run_that_will_not_fit(tiny_config, tmp_path):
    result = run_cli("run", str(tiny_config(monitor={"budget": "1MiB"})), "--headless", "--json", "--strict")
    assert result.returncode == 1, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed"
    assert "refused to start (--strict)" in summary["error"]
    assert summary["phases"] == []  # nothing was loaded
    assert summary["suggestions"]
