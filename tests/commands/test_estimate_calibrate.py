"""``ftwatch estimate --calibrate`` and ``ftwatch fit --calibrate`` from the command line.

The calibrated figures are checked against the truth of ``benchmarks/estimate_truth.py``: the
bundled tiny Llama (2 layers, so its 2-layer copy is the full model), rebuilt from its config.json
and trained for two real steps by the libraries' own calls, its peak measured by the peak meter.
The tolerance is 1%, as in ``tests/training/test_calibrate.py`` (the two agree to within bytes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_MODEL, load_benchmark, run_cli, tiny_sections, write_config

pytestmark = pytest.mark.slow  # each runs real training steps in a subprocess

TOLERANCE = 0.01
TARGETS = ["q_proj", "v_proj"]


truth = load_benchmark("estimate_truth")


def _tiny_peak(batch: int) -> int:
    config = json.loads((TINY_MODEL / "config.json").read_text())
    return truth.measure_training_peak(config, "float32", TARGETS, False, batch, 64)


def _config(tmp_path: Path, name: str = "tiny.toml", **overrides: dict[str, object]) -> Path:
    sections = tiny_sections(tmp_path, **overrides)
    sections["training"]["optim"] = "adamw_torch"
    return write_config(tmp_path / name, sections)


def test_calibrate_prints_what_it_measured_and_meets_the_truth(tmp_path: Path) -> None:
    config = _config(tmp_path)
    text = run_cli("estimate", str(config), "--calibrate", "--device", "cpu")
    assert text.returncode == 0, text.stderr
    assert "calibrating: training a 1-layer copy (2 steps of 4 x 64 tokens on cpu)" in text.stderr
    assert "calibrated   measured on cpu: copies of 1 and 2 layers" in text.stdout
    for words in ("1 layer ", "2 layers", "per layer", "fixed", "x2 layers", "calibrated peak", "meta estimate",
                  "calibrated verdict"):
        assert words in text.stdout, words

    out = run_cli("estimate", str(config), "--calibrate", "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    calibrated = data["calibrated"]
    assert [c["layers"] for c in calibrated["copies"]] == [1, 2]
    assert calibrated["full_layers"] == 2 and calibrated["device"] == "cpu"
    assert calibrated["meta_total_bytes"] == data["estimate_bytes"]["total"]
    total = calibrated["estimate_bytes"]["total"]
    assert total == sum(v for k, v in calibrated["estimate_bytes"].items() if k != "total")
    assert calibrated["difference_bytes"] == total - data["estimate_bytes"]["total"]
    assert calibrated["verdict"] == "fits"
    measured = _tiny_peak(4)
    assert abs(total / measured - 1) <= TOLERANCE, (total, measured)
    # fixed + per layer x 2 is the 2-layer copy (the full model here), per category
    two = calibrated["copies"][1]["categories"]
    for name, value in calibrated["extrapolated_bytes"].items():
        if name != "total":
            assert value == calibrated["fixed_bytes"][name] + 2 * calibrated["per_layer_bytes"][name] == two[name]


def test_a_copy_that_cannot_be_built_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = _config(tmp_path, model={"attn_implementation": "flash_attention_2"})  # not installed on a CPU box
    out = run_cli("estimate", str(config), "--calibrate", "--device", "cpu")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip() and "kernels" not in line]
    assert len(lines) == 1 and lines[0].startswith("ftwatch estimate: cannot build LlamaConfig"), out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_a_quantized_config_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    config = _config(tmp_path, model={"load_in_4bit": True})
    out = run_cli("estimate", str(config), "--calibrate", "--device", "cpu")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip() and "kernels" not in line]
    assert len(lines) == 1 and "load_in_4bit" in lines[0] and "calibrating" not in out.stderr, out.stderr


def test_fit_calibrate_prices_the_micro_batches_it_did_not_measure(tmp_path: Path) -> None:
    # the config asks for 8 x 1; the budget is between the true peaks at 2 and 4, so 2 x 4 is the fit
    # (calibrated at 8 and 4: the peak at 2 is carried along the line through those)
    at_2, at_4, at_8 = _tiny_peak(2), _tiny_peak(4), _tiny_peak(8)
    budget = (at_2 + at_4) // 2
    config = _config(tmp_path, training={"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1},
                     monitor={"budget": f"{budget}B"})
    out = run_cli("fit", str(config), "--calibrate", "--device", "cpu", "--headroom", "0", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["calibrated"] is True and data["micro_batch"] == 2
    peaks = {t["micro_batch"]: t["peak_bytes"] for t in data["trials"]}
    assert sorted(peaks) == [2, 4, 8]
    for micro, measured in ((2, at_2), (4, at_4), (8, at_8)):
        assert abs(peaks[micro] / measured - 1) <= TOLERANCE, (micro, peaks[micro], measured)
    assert any("micro-batches 8 and 4" in note for note in data["notes"])
