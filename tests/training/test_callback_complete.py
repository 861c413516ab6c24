"""A run with ``FtwatchCallback`` added by hand is as complete as the Trainer allows (issue 12, item 2):
the header says ``origin: callback``, the model event names the model and counts its parameters,
the step total is known (``max_steps``, or the Trainer's count for epochs), and the pre-flight
estimate is made from the Trainer; viewers fold all of it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import EXAMPLES, TINY_MODEL
from ftwatch.runlog.event_reader import read_events
from ftwatch.runlog.state import RunState
from ftwatch.training.probe.script_estimate import MADE
from ftwatch.views.dashboard.widgets.phases import phase_cells
from ftwatch.views.dashboard.worker_tail import missing_log_note

SCRIPT = textwrap.dedent('''
    import sys
    sys.path.insert(0, {examples!r})
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator
    from own_script import HERE, blocks
    from ftwatch import FtwatchCallback

    log_dir, mode = sys.argv[1], sys.argv[2]
    tokenizer = AutoTokenizer.from_pretrained(HERE / "tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(HERE / "tiny-llama", dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    steps = dict(max_steps=4) if mode == "steps" else dict(num_train_epochs=1)
    args = TrainingArguments(output_dir=log_dir + "/out", per_device_train_batch_size=4, learning_rate=1e-3,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                             logging_strategy="no", **steps)
    if mode == "epochs":
        args.max_length = 64  # as TRL's SFTConfig has it: the estimate can be made at train begin
    trainer = Trainer(model=model, args=args, train_dataset=blocks(tokenizer), data_collator=default_data_collator,
                      callbacks=[FtwatchCallback(log_dir=log_dir)])
    trainer.train()
    print(f"after train: step {{trainer.state.global_step}}", flush=True)
''')


def hand_counts() -> tuple[int, int]:
    """Parameters of the tiny Llama with LoRA r=8 on q_proj and v_proj, counted from config.json."""
    c = json.loads((TINY_MODEL / "config.json").read_text())
    h, inter, vocab, layers = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    q_out = c["num_attention_heads"] * c["head_dim"]
    kv_out = c["num_key_value_heads"] * c["head_dim"]
    attention = h * q_out + 2 * h * kv_out + q_out * h
    per_layer = attention + 3 * h * inter + 2 * h  # q, k, v, o; gate, up, down; two norms
    base = vocab * h * (1 if c["tie_word_embeddings"] else 2) + layers * per_layer + h  # + the final norm
    lora = layers * 8 * ((h + q_out) + (h + kv_out))  # A (r x in) and B (out x r) on q_proj and v_proj
    return base + lora, lora


def run_script(tmp_path: Path, mode: str) -> tuple[list[dict], str]:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(examples=str(EXAMPLES)))
    log_dir = tmp_path / "runs"
    done = subprocess.run([sys.executable, str(script), str(log_dir), mode], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    logs = list(log_dir.glob("*/events.jsonl"))
    assert len(logs) == 1, logs
    return list(read_events(logs[0])), done.stdout


def one(events: list[dict], kind: str) -> dict:
    found = [e for e in events if e["kind"] == kind]
    assert len(found) == 1, (kind, found)
    return found[0]


@pytest.mark.slow
def test_a_callback_run_writes_origin_model_step_total_and_estimate(tmp_path: Path) -> None:
    events, out = run_script(tmp_path, "steps")
    assert "after train: step 4" in out
    total, trainable = hand_counts()
    header = events[0]
    assert header["kind"] == "header" and header["origin"] == "callback" and header["command"] is None
    model = one(events, "model")
    assert (model["params_total"], model["params_trainable"]) == (total, trainable) == (170304, 4096)
    assert Path(model["name"]) == TINY_MODEL
    training = [e for e in events if e["kind"] == "phase" and e["name"] == "training"]
    assert [e["max_steps"] for e in training] == [4]
    estimate = one(events, "estimate")
    assert estimate["made"] == MADE
    assert estimate["seq_len"] == 64 and estimate["seq_len_source"] == "the first step's longest batch"
    assert (estimate["params_total"], estimate["params_trainable"]) == (total, trainable)
    # the measured LoRA weights are the estimate's: 4096 float32 parameters
    assert estimate["estimate_bytes"]["lora"] == trainable * 4
    first_snapshot = next(i for i, e in enumerate(events) if e["kind"] == "snapshot" and e.get("step") == 1)
    assert events.index(estimate) < first_snapshot  # written at the end of step 1, before its snapshot
    assert [e["name"] for e in events if e["kind"] == "phase"] == ["preparing_trainer", "training"]
    assert events[-1]["kind"] == "exit" and events[-1]["status"] == "finished"

    state = RunState()
    state.apply_all(events)
    assert state.max_steps == 4 and state.origin == "callback"
    assert state.header["model"] == model["name"] and state.summary()["model"] == model["name"]
    assert state.summary()["estimate"]["verdict"] == "fits"
    cells = phase_cells(state.phases, state.phase, "finished", state.capacity, state.last_t, origin=state.origin)
    assert [(c[1], c[2]) for c in cells[:2]] == [("loading", "before callback"), ("LoRA", "before callback")]
    assert all(c[0] == "✔" for c in cells[2:])
    assert missing_log_note(False, state.origin) == "this script writes its output to its own terminal"


@pytest.mark.slow
def test_epochs_give_the_trainers_step_total_and_max_length_an_estimate_at_train_begin(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from own_script import blocks
    finally:
        sys.path.remove(str(EXAMPLES))
    from transformers import AutoTokenizer

    expected_steps = math.ceil(len(blocks(AutoTokenizer.from_pretrained(TINY_MODEL))) / 4)
    events, out = run_script(tmp_path, "epochs")
    assert f"after train: step {expected_steps}" in out
    training = [e for e in events if e["kind"] == "phase" and e["name"] == "training"]
    assert [e["max_steps"] for e in training] == [expected_steps]
    estimate = one(events, "estimate")
    assert estimate["seq_len"] == 64 and estimate["seq_len_source"] == "TrainingArguments.max_length"
    first_snapshot = next(i for i, e in enumerate(events) if e["kind"] == "snapshot" and e.get("step") == 1)
    training_at = events.index(training[0])
    assert training_at < events.index(estimate) < first_snapshot  # at train begin
