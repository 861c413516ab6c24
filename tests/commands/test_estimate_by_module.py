"""`ftwatch estimate CONFIG --by-module`: the module table after the usual output, and `modules` in
`--json`, checked against figures computed here from the tiny model's config.json."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from conftest import TINY_MODEL, run_cli
from ftwatch.cli import main as cli_main

FP32 = 4


def tiny() -> dict[str, Any]:
    return json.loads((TINY_MODEL / "config.json").read_text())


def test_by_module_prints_the_table_after_the_usual_output(tiny_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # the width the table is for when stdout is not a terminal
    result = run_cli("estimate", str(tiny_config()), "--by-module", "--device", "cpu", "--no-data-scan")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    verdict = next(i for i, line in enumerate(lines) if line.strip().startswith("verdict"))
    start = next(i for i, line in enumerate(lines) if line.startswith("Memory by module"))
    assert verdict < start
    table = lines[start:]
    assert all(len(line) <= 80 for line in table), [line for line in table if len(line) > 80]
    firsts = [line.split()[0] for line in table if line.strip()]
    for block in ("model.embed_tokens", "model.layers", "model.norm", "lm_head", "loss"):
        assert block in firsts
    layer_rows = [line for line in table if re.match(r"layer \d+ ", line)]
    assert [row.split()[1] for row in layer_rows] == [str(i) for i in range(tiny()["num_hidden_layers"])]


def test_without_by_module_there_is_no_table_and_no_modules_key(tiny_config: Any) -> None:
    config = str(tiny_config())
    text = run_cli("estimate", config, "--device", "cpu", "--no-data-scan")
    assert text.returncode == 0 and "Memory by module" not in text.stdout
    data = json.loads(run_cli("estimate", config, "--device", "cpu", "--no-data-scan", "--json").stdout)
    assert "modules" not in data


def test_by_module_json_carries_the_tree(tiny_config: Any) -> None:
    result = run_cli("estimate", str(tiny_config()), "--by-module", "--json", "--device", "cpu", "--no-data-scan")
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    modules = data["modules"]
    estimate = data["estimate_bytes"]
    assert modules["totals"] == {c: estimate[c] for c in ("weights", "lora", "grads", "optimizer", "activations")}
    c = tiny()
    h, vocab = c["hidden_size"], c["vocab_size"]
    blocks = {b["name"]: b["bytes"] for b in modules["blocks"]}
    assert blocks["model.embed_tokens"]["weights"] == blocks["lm_head"]["weights"] == vocab * h * FP32
    assert [row["index"] for row in modules["layers"]] == list(range(c["num_hidden_layers"]))
    assert [row["input"] for row in modules["layers"]] == [4 * 64 * h * FP32] * c["num_hidden_layers"]
    assert modules["context"] == {"batch": 4, "seq_len": 64, "checkpointing": False, "vocab_size": vocab,
                                  "dtype": "float32", "recomputed_layer": None}
    assert "tree" not in modules


def test_formula_fallback_says_no_tree_in_one_line(tiny_config: Any, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("op not supported on meta")

    from ftwatch.analysis.estimate import activation_trace

    monkeypatch.setattr(activation_trace, "trace_activations", broken)
    monkeypatch.setattr(activation_trace, "_TRACE_CACHE", {})
    config = str(tiny_config(training={"per_device_train_batch_size": 3}))
    assert cli_main(["estimate", config, "--by-module", "--device", "cpu", "--no-data-scan"]) == 0
    out = capsys.readouterr().out
    assert "Memory by module" not in out
    said = [line for line in out.splitlines() if line.startswith("module tree: not available")]
    assert len(said) == 1
    assert cli_main(["estimate", config, "--by-module", "--json", "--device", "cpu", "--no-data-scan"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "modules" in data and data["modules"] is None
