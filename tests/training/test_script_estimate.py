"""The pre-flight estimate of a script run, made from what the Trainer shows
(``ftwatch.training.probe.script_estimate``): the same figures the worker's estimate gives for the
same run from its config file, the Trainer's settings read, and failures kept out of training."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import TINY_MODEL
from ftwatch.common.config import load_config
from ftwatch.training.probe.callback import FtwatchCallback
from ftwatch.training.probe.guard import Guard
from ftwatch.training.probe.script_estimate import (
    MADE,
    capacity_after_loading,
    estimate_from_trainer,
    seq_len_from_args,
    training_fields,
)


@pytest.fixture(scope="module")
def peft_model() -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))


class FakeProbe:
    """What ``estimate_from_trainer`` uses of a probe: its device, budget, writer and notes."""

    def __init__(self, budget: int | None = None, capacity: int = 64 << 30) -> None:
        self.device_info = {"type": "cpu", "capacity": capacity, "capacity_source": "ram"}
        self.budget = budget
        self.events: list[tuple[str, dict]] = []
        self.writer = types.SimpleNamespace(emit=lambda kind, **f: self.events.append((kind, f)))
        self.guard = Guard()
        self.estimate_made = False
        self.origin = "callback"

    def note(self, code: str, message: str) -> None:
        self.events.append(("note", {"code": code, "message": message}))


def trainer_args(**fields: Any) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(output_dir="unused", report_to="none", use_cpu=True, **fields)


def test_the_trainers_estimate_equals_the_workers_for_the_same_run(tmp_path: Path, tiny_config, peft_model) -> None:
    from ftwatch.analysis.estimate import estimate

    cfg = load_config(tiny_config(training={"per_device_train_batch_size": 4}))
    worker = estimate(cfg, 64 << 30, on_gpu=False, capacity_source="ram")
    probe = FakeProbe()
    result = estimate_from_trainer(probe, peft_model, trainer_args(per_device_train_batch_size=4), 64, "test")
    assert result is not None and probe.estimate_made
    [(kind, event)] = probe.events
    assert kind == "estimate" and event["made"] == MADE and event["seq_len"] == 64
    assert event["estimate_bytes"] == {**worker.categories, "total": worker.total}
    assert (event["params_total"], event["params_trainable"]) == (worker.params_total, worker.params_trainable)
    assert event["verdict"] == "fits" and event["capacity_source"] == "ram"


def test_batch_checkpointing_and_optimizer_come_from_the_arguments(tiny_config, peft_model) -> None:
    from ftwatch.analysis.estimate import estimate

    training = {"per_device_train_batch_size": 2, "activation_checkpointing": True, "optim": "adafactor"}
    args = trainer_args(**training)
    fields = training_fields(args, peft_model)
    assert (fields["per_device_train_batch_size"], fields["activation_checkpointing"], fields["optim"]) == (
        2, True, "adafactor")
    cfg = load_config(tiny_config(training=training))
    worker = estimate(cfg, 64 << 30, on_gpu=False)
    probe = FakeProbe()
    estimate_from_trainer(probe, peft_model, args, 64, "test")
    assert probe.events[0][1]["estimate_bytes"] == {**worker.categories, "total": worker.total}
    plain = FakeProbe()
    estimate_from_trainer(plain, peft_model, trainer_args(per_device_train_batch_size=2), 64, "test")
    ours, theirs = probe.events[0][1]["estimate_bytes"], plain.events[0][1]["estimate_bytes"]
    assert ours["activations"] < theirs["activations"] and ours["optimizer"] < theirs["optimizer"]


def test_a_run_that_will_not_fit_warns_of_training_not_of_loading(peft_model) -> None:
    probe = FakeProbe(budget=100_000)  # below even the weights: but they loaded already
    estimate_from_trainer(probe, peft_model, trainer_args(per_device_train_batch_size=4), 64, "test")
    kinds = [k for k, _ in probe.events]
    assert kinds == ["estimate", "warning"]
    estimate, warning = probe.events[0][1], probe.events[1][1]
    assert estimate["verdict"] == "does_not_fit" and estimate["fails_at"] == "training"
    assert estimate["capacity_source"] == "budget" and estimate["capacity_bytes"] == 100_000
    assert warning["code"] == "will_not_fit" and warning["suggestions"]


def test_no_lora_or_no_length_is_a_note_never_an_exception(peft_model) -> None:
    from transformers import AutoModelForCausalLM

    probe = FakeProbe()
    plain = AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)
    assert estimate_from_trainer(probe, plain, trainer_args(), 64, "test") is None
    assert probe.events[0][0] == "note" and probe.events[0][1]["code"] == "preflight_failed"
    assert "no LoRA adapter" in probe.events[0][1]["message"]
    probe = FakeProbe()
    assert estimate_from_trainer(probe, peft_model, trainer_args(), None, None) is None
    assert "sequence length is not known" in probe.events[0][1]["message"] and probe.estimate_made


def test_the_sequence_length_the_arguments_fix() -> None:
    assert seq_len_from_args(types.SimpleNamespace(max_length=512)) == (512, "TrainingArguments.max_length")
    assert seq_len_from_args(types.SimpleNamespace(max_seq_length=256)) == (256, "TrainingArguments.max_seq_length")
    assert seq_len_from_args(types.SimpleNamespace(max_length=None, max_seq_length=True)) == (None, None)
    assert seq_len_from_args(trainer_args()) == (None, None)


def test_capacity_after_loading_on_cpu_and_with_a_budget() -> None:
    device = {"type": "cpu", "capacity": 123, "capacity_source": "ram"}
    assert capacity_after_loading(device, None) == (123, "ram")
    assert capacity_after_loading(device, 99) == (99, "budget")


@pytest.mark.parametrize("origin, made", [("worker", False), ("callback", True), ("command", True)])
def test_the_callback_estimates_only_runs_that_have_none(origin: str, made: bool, peft_model) -> None:
    probe = FakeProbe()
    probe.origin = origin
    callback = FtwatchCallback(probe=probe)  # type: ignore[arg-type]
    callback._start_estimate(types.SimpleNamespace(max_length=64, per_device_train_batch_size=1), peft_model)
    assert any(k == "estimate" for k, _ in probe.events) is made
    again = len(probe.events)
    callback._start_estimate(types.SimpleNamespace(max_length=64, per_device_train_batch_size=1), peft_model)
    assert len(probe.events) == again  # once per run


def test_a_shared_probe_with_an_estimate_is_not_estimated_again(peft_model) -> None:
    probe = FakeProbe()
    probe.origin, probe.estimate_made = "command", True
    FtwatchCallback(probe=probe)._start_estimate(types.SimpleNamespace(max_length=64), peft_model)  # type: ignore[arg-type]
    assert probe.events == []


def test_estimate_false_switches_it_off(peft_model) -> None:
    probe = FakeProbe()
    FtwatchCallback(probe=probe, estimate=False)._start_estimate(  # type: ignore[arg-type]
        types.SimpleNamespace(max_length=64), peft_model)
    assert probe.events == [] and not probe.estimate_made
