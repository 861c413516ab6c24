"""End to end: `ftwatch run --headless --json` on the bundled tiny model, checked against figures
computed here from the model's config.json and the LoRA/optimizer settings (not from ftwatch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_MODEL, run_cli, wait_for
from ftwatch.runlog.event_reader import read_events

pytestmark = pytest.mark.slow

FP32 = 4


def expected_tiny_bytes(r: int, targets: tuple[str, ...]) -> dict[str, int]:
    """Weights, LoRA, grads and AdamW state of the tiny example, from config.json alone."""
    cfg = json.loads((TINY_MODEL / "config.json").read_text())
    h, inter, layers, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    head_dim = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    per_layer = sum(i * o for i, o in shapes.values()) + 2 * h  # projections + two RMSNorms
    params = vocab * h + layers * per_layer + h + (0 if cfg["tie_word_embeddings"] else vocab * h)
    # buffers: the rotary embedding's inverse frequencies, head_dim/2 float32 values each
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert buffers % (head_dim // 2 * FP32) == 0
    lora_params = layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)
    lora_tensors = layers * len(targets) * 2  # lora_A and lora_B
    lora = lora_params * FP32
    return {
        "weights": params * FP32 + buffers,
        "lora": lora,
        "grads": lora,
        # AdamW: exp_avg and exp_avg_sq like the parameters, plus a float32 step counter per tensor
        "optimizer": 2 * lora + lora_tensors * FP32,
        "params_total": params + lora_params,
        "params_trainable": lora_params,
    }


def run_json(config: Path) -> dict:
    result = run_cli("run", str(config), "--headless", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_tiny_run_measures_every_category_exactly(tiny_config):
    summary = run_json(tiny_config())
    expected = expected_tiny_bytes(8, ("q_proj", "v_proj"))
    assert summary["status"] == "finished"
    assert summary["steps"] == 6
    assert [p["name"] for p in summary["phases"]] == ["loading_model", "applying_lora", "preparing_trainer",
                                                      "training"]
    peak = summary["peak_bytes"]
    for category in ("weights", "lora", "grads", "optimizer"):
        assert peak[category] == expected[category], category
    assert peak["activations"] > 0
    assert summary["params_total"] == expected["params_total"]
    assert summary["params_trainable"] == expected["params_trainable"]
    assert peak["total"] >= sum(peak[c] for c in ("weights", "lora", "grads", "optimizer"))
    assert summary["capacity_bytes"] > 0 and summary["oom"] is None


def test_json_mode_keeps_stdout_for_the_summary_alone(tiny_config):
    result = run_cli("run", str(tiny_config(training={"max_steps": 2})), "--headless", "--json")
    assert result.returncode == 0
    summary = json.loads(result.stdout)  # nothing but the object
    assert "phase training" in result.stderr
    log = Path(summary["run_log"])  # where to replay or attach it
    assert log.name == "events.jsonl" and json.loads(log.read_text().splitlines()[-1])["kind"] == "exit"


def test_activations_scale_with_batch_and_drop_with_checkpointing(tiny_config):
    base = run_json(tiny_config(training={"max_steps": 2, "per_device_train_batch_size": 4}))
    double = run_json(tiny_config(training={"max_steps": 2, "per_device_train_batch_size": 8}))
    ckpt = run_json(tiny_config(training={"max_steps": 2, "per_device_train_batch_size": 4,
                                          "gradient_checkpointing": True}))
    a4, a8 = base["peak_bytes"]["activations"], double["peak_bytes"]["activations"]
    assert a8 / a4 == pytest.approx(2.0, rel=0.15)
    assert ckpt["peak_bytes"]["activations"] < a4
    assert ckpt["status"] == "finished"


def test_rank_and_targets_change_lora_exactly(tiny_config):
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
    summary = run_json(tiny_config(lora={"r": 4, "target_modules": list(targets)}, training={"max_steps": 1}))
    expected = expected_tiny_bytes(4, targets)
    for category in ("weights", "lora", "grads", "optimizer"):
        assert summary["peak_bytes"][category] == expected[category], category



def _events(run_root: Path) -> list[dict]:
    logs = list(run_root.glob("*/events.jsonl"))
    return list(read_events(logs[0])) if logs else []


def test_sigkill_mid_training_leaves_a_readable_log_reported_failed(tiny_config, tmp_path):
    config = tiny_config(training={"max_steps": 100000})
    viewer = subprocess.Popen([sys.executable, "-m", "ftwatch", "run", str(config), "--headless", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_for(lambda: any(e["kind"] == "snapshot" and (e.get("step") or 0) >= 3 for e in _events(tmp_path / "runs")))
        pid = next(e["pid"] for e in _events(tmp_path / "runs") if e["kind"] == "header")
        os.kill(pid, signal.SIGKILL)
        out, err = viewer.communicate(timeout=60)
    finally:
        if viewer.poll() is None:
            viewer.kill()
    assert viewer.returncode == 1
    summary = json.loads(out)
    assert summary["status"] == "failed"
    assert "SIGKILL" in summary["error"]
    events = _events(tmp_path / "runs")
    assert [e["kind"] for e in events[:2]] == ["note", "header"] and events[0]["code"] == "starting"
    assert events[-1]["kind"] == "exit" and events[-1]["by"] == "monitor"
    replay = run_cli("replay", str(next((tmp_path / "runs").iterdir())), "--json")
    assert replay.returncode == 0
    assert json.loads(replay.stdout)["status"] == "failed"
    assert json.loads(replay.stdout)["steps"] >= 3


def test_stop_request_ends_cleanly_at_a_step_boundary(tiny_config, tmp_path):
    config = tiny_config(training={"max_steps": 100000})
    viewer = subprocess.Popen([sys.executable, "-m", "ftwatch", "run", str(config), "--headless", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_for(lambda: any(e["kind"] == "snapshot" and (e.get("step") or 0) >= 3 for e in _events(tmp_path / "runs")))
        viewer.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal does
        out, err = viewer.communicate(timeout=60)
    finally:
        if viewer.poll() is None:
            viewer.kill()
    assert viewer.returncode == 130, err[-2000:]
    summary = json.loads(out)
    assert summary["status"] == "stopped"
    events = _events(tmp_path / "runs")
    last_step = max(e["step"] for e in events if e["kind"] == "snapshot" and e.get("step"))
    assert events[-1]["kind"] == "exit" and events[-1]["by"] == "worker"
    assert events[-1]["step"] == last_step  # stopped after a whole step, nothing half-done


def test_a_closed_output_leaves_the_training_running_and_says_how_to_get_back(tiny_config, tmp_path):
    """`ftwatch run CONFIG --headless | head -3`: the viewer's output goes, the training does not."""
    config = tiny_config(training={"max_steps": 100000, "logging_steps": 1}, monitor={"print_every": 1})
    viewer = subprocess.Popen([sys.executable, "-m", "ftwatch", "run", str(config), "--headless"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    pid = None
    try:
        for _ in range(3):
            viewer.stdout.readline()
        viewer.stdout.close()  # the reader goes away, as head's does
        err = viewer.stderr.read()
        viewer.wait(timeout=120)
        assert viewer.returncode == 141, err[-2000:]
        pid = next(e["pid"] for e in _events(tmp_path / "runs") if e["kind"] == "header")
        assert f"training continues (pid {pid})" in err and "Traceback" not in err
        step = max(e.get("step") or 0 for e in _events(tmp_path / "runs"))
        wait_for(lambda: max(e.get("step") or 0 for e in _events(tmp_path / "runs")) > step)  # it trains on
        assert all(e["kind"] != "exit" for e in _events(tmp_path / "runs"))
    finally:
        if viewer.poll() is None:
            viewer.kill()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
