"""The probe's module attribution (``module_meter``) in a hand-written loop on the bundled tiny model:
no hooks outside measured forwards (none at all with ``modules="off"``), ownership of shared
storages, a forward that raises, a failure of the attribution itself, gradient accumulation, and
the ``[monitor] modules`` config key. The exact figures of a real run are in
``tests/end_to_end/test_modules_run.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn.modules import module as torch_module

from conftest import TINY_MODEL, tiny_sections, write_config
from ftwatch.common.config import load_config
from ftwatch.common.config_errors import ConfigError
from ftwatch.runlog.event_reader import read_events
from ftwatch.training.probe import module_meter
from ftwatch.training.probe.module_meter import ModuleMeter, model_bytes_by_module
from ftwatch.training.probe.probe import Probe

FP32 = 4


def global_hooks() -> int:
    """Global module forward hooks installed now (ours are the only ones in these tests)."""
    return len(torch_module._global_forward_pre_hooks) + len(torch_module._global_forward_hooks)


@pytest.fixture
def tiny_lora():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    model.train()
    return model


def run_probe(tmp_path: Path, model: torch.nn.Module, batches: list[list[torch.Tensor]], **probe_kwargs) -> list[dict]:
    """A hand-written loop: each step runs its micro-batches (forward + backward), then AdamW."""
    probe = Probe(tmp_path / "run", name="t", device="cpu", handle_signals=False, sample_hz=1.0, **probe_kwargs)
    probe.start()
    probe.attach_model(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    probe.attach_optimizer(optimizer)
    for step, micro in enumerate(batches, 1):
        probe.step_begin()
        for ids in micro:
            model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        probe.step_end(step)
    probe.finish("finished", step=len(batches))
    return list(read_events(tmp_path / "run"))


def hooks_seen_in_forwards(model: torch.nn.Module) -> list[int]:
    """Record the global hooks installed while each forward runs (read inside the model's first layer)."""
    seen: list[int] = []
    model.get_base_model().model.layers[0].register_forward_pre_hook(lambda *_: seen.append(global_hooks()))
    return seen


def ids(seq: int, batch: int = 4) -> torch.Tensor:
    return torch.randint(3, 500, (batch, seq), generator=torch.Generator().manual_seed(seq))


def test_off_writes_no_modules_event_and_installs_no_module_hooks(tmp_path, tiny_lora):
    seen = hooks_seen_in_forwards(tiny_lora)
    events = run_probe(tmp_path, tiny_lora, [[ids(64)], [ids(32)]], modules="off", activations_every=1)
    assert [e for e in events if e["kind"] == "modules"] == []
    assert seen == [0, 0]  # both forwards were measured (activations_every=1), neither saw a hook
    assert global_hooks() == 0
    snapshots = [e for e in events if e["kind"] == "snapshot" and e.get("step")]
    assert [s["categories"]["activations"] > 0 for s in snapshots] == [True, True]


def test_hooks_exist_only_during_measured_forwards(tmp_path, tiny_lora):
    seen = hooks_seen_in_forwards(tiny_lora)
    # activations_every=3: a new shape is measured, the same shape again is not (carried), twice
    events = run_probe(tmp_path, tiny_lora, [[ids(64)], [ids(64)], [ids(64)]], activations_every=3)
    assert seen[0] == 2 and seen[1:] == [0, 0]  # one pre and one post hook, on the measured forward only
    assert global_hooks() == 0
    modules = [e for e in events if e["kind"] == "modules"]
    assert [e["step"] for e in modules] == [1]  # steps 2 and 3 carried step 1's figure: no event
    snapshot = next(e for e in events if e["kind"] == "snapshot" and e.get("step") == 1)
    assert modules[0]["totals"] == {k: v for k, v in snapshot["categories"].items() if v}
    # written after the step's snapshot
    assert events.index(snapshot) < events.index(modules[0])


class TiedToy(torch.nn.Module):
    """A frozen embedding tied to a frozen head, a trainable adapter and a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.adapter = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.ones(3))
        self.embed.weight.requires_grad_(False)


def test_weights_split_follows_model_bytes_rules_tied_weight_once_in_first_owner():
    toy = TiedToy()
    split = model_bytes_by_module(toy)
    assert split == {"embed": {"weights": 10 * 4 * FP32},   # the tied 10x4 matrix, in its first owner only
                     "adapter": {"lora": (4 * 4 + 4) * FP32},  # trainable weight and bias
                     "": {"weights": 3 * FP32}}              # the top's own buffer
    assert model_bytes_by_module(toy, base_only=True) == {"embed": {"weights": 160}, "adapter": {"weights": 80},
                                                          "": {"weights": 12}}


def test_a_storage_shared_by_a_trainable_and_a_frozen_tensor_is_lora_once():
    toy = TiedToy()
    toy.frozen_view = torch.nn.Parameter(toy.adapter.weight.detach()[0], requires_grad=False)  # same storage
    split = model_bytes_by_module(toy)
    assert split["adapter"] == {"lora": 80}
    assert split[""] == {"weights": 12}  # the buffer only: the frozen view's storage is the adapter's


class Boom(Exception):
    pass


def test_a_forward_that_raises_leaves_no_hooks_and_the_next_step_is_attributed(tmp_path, tiny_lora):
    probe = Probe(tmp_path / "run", name="t", device="cpu", handle_signals=False, sample_hz=1.0, activations_every=1)
    probe.start()
    probe.attach_model(tiny_lora)
    mlp = tiny_lora.get_base_model().model.layers[1].mlp
    handle = mlp.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(Boom()))
    probe.step_begin()
    with pytest.raises(Boom):
        tiny_lora(input_ids=ids(16), labels=ids(16))
    assert global_hooks() == 0  # removed as the forward raised, not at the next step
    handle.remove()
    probe.step_begin()
    tiny_lora(input_ids=ids(16), labels=ids(16)).loss.backward()
    probe.before_optimizer_step()
    probe.step_end(1)
    probe.finish("finished", step=1)
    events = list(read_events(tmp_path / "run"))
    modules = [e for e in events if e["kind"] == "modules"]
    assert len(modules) == 1 and modules[0]["context"]["seq_len"] == 16
    assert not [e for e in events if e["kind"] == "note" and e.get("code") == "probe_failed"]


def test_an_attribution_failure_switches_only_attribution_off(tmp_path, tiny_lora, monkeypatch):
    reference = run_probe(tmp_path / "a", tiny_lora, [[ids(32)]], modules="off")

    def broken(self, meter):  # noqa: ANN001
        self.abort_forward()
        raise RuntimeError("planted")

    monkeypatch.setattr(ModuleMeter, "end_forward", broken)
    events = run_probe(tmp_path / "b", tiny_lora, [[ids(32)], [ids(48)]], activations_every=1)
    failed = [e for e in events if e["kind"] == "note" and e.get("code") == "probe_failed"]
    assert [e["part"] for e in failed] == ["module attribution"]
    assert [e for e in events if e["kind"] == "modules"] == []
    snaps = [e["categories"] for e in events if e["kind"] == "snapshot" and e.get("step")]
    ref = [e["categories"] for e in reference if e["kind"] == "snapshot" and e.get("step")]
    assert snaps[0] == ref[0]  # every category as measured without attribution
    assert snaps[1]["activations"] > 0 and global_hooks() == 0
    assert [e["status"] for e in events if e["kind"] == "exit"] == ["finished"]


@pytest.mark.parametrize("lengths", [(32, 64), (64, 32)])
def test_accumulation_keeps_the_split_of_the_largest_forward(tmp_path, tiny_lora, lengths):
    events = run_probe(tmp_path, tiny_lora, [[ids(n) for n in lengths]], activations_every=1)
    (event,) = [e for e in events if e["kind"] == "modules"]
    snapshot = next(e for e in events if e["kind"] == "snapshot" and e.get("step") == 1)
    assert event["context"]["seq_len"] == 64 and event["context"]["batch"] == 4
    assert event["totals"]["activations"] == snapshot["categories"]["activations"]
    assert [row["input"] for row in event["layers"]] == [4 * 64 * 64 * FP32] * 2  # batch x seq x hidden, fp32


def test_decoder_layers_fall_back_to_the_longest_module_list_of_one_class():
    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mixed = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Tanh(), torch.nn.ReLU()])
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])

    plain = Plain()
    assert module_meter.decoder_layers(plain) == list(plain.blocks)
    assert ModuleMeter(plain).layer_paths == ["blocks.0", "blocks.1", "blocks.2"]


@pytest.mark.parametrize("value", ["summary", "full", "off"])
def test_config_monitor_modules_key(tmp_path, value):
    path = write_config(tmp_path / "c.toml", tiny_sections(tmp_path, monitor={"modules": value}))
    assert load_config(path).monitor.modules == value


def test_config_default_and_bad_monitor_modules(tmp_path):
    assert load_config(write_config(tmp_path / "d.toml", tiny_sections(tmp_path))).monitor.modules == "summary"
    for bad in ("tree", 1, True):
        with pytest.raises(ConfigError, match=r"\[monitor\]\.modules"):
            load_config(write_config(tmp_path / "b.toml", tiny_sections(tmp_path, monitor={"modules": bad})))


def test_probe_refuses_an_unknown_mode(tmp_path):
    with pytest.raises(ValueError, match="modules must be one of off, summary, full"):
        Probe(tmp_path / "r", name="t", device="cpu", record=False, modules="everything")


def test_the_callback_refuses_an_unknown_mode_where_the_script_builds_it():
    """At construction, not at train begin (where a failing probe leaves the run unmonitored)."""
    from ftwatch.training.probe.callback import FtwatchCallback

    with pytest.raises(ValueError, match=r"FtwatchCallback\(modules=...\) must be one of off, summary, full"):
        FtwatchCallback(modules="everything")
    assert FtwatchCallback(modules="off")._probe_kwargs["modules"] == "off"
