"""The CPU peak meter (training/probe/peak_meter.py): live tensor bytes counted op by op, checked
against peaks computed by hand from shapes, and on the probe's measured steps the split at the peak
against the probe's own figures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ftwatch.runlog.event_fields import check_event
from ftwatch.runlog.event_reader import read_events
from ftwatch.training.probe.peak_meter import SPLIT_CATEGORIES, PeakMeter
from ftwatch.training.probe.probe import Probe

F32 = 4
MB4 = 1000 * 1000 * F32  # one 1000 x 1000 float32 tensor


def test_a_chain_of_ops_peaks_where_the_hand_count_says():
    meter = PeakMeter()
    meter.start()
    a = torch.ones(1000, 1000)           # 4 MB live
    b = a * 2                            # 8 MB
    a.mul_(3)                            # in place: no new storage
    v = b.view(-1)                       # a view: no new storage
    t = b.t()                            # another view
    del a                                # 4 MB (b)
    c = b @ b                            # 8 MB
    s = (c + 1).sum()                    # the temporary c + 1 (4 MB) with the 4-byte sum: 12 MB + 4, then 8 MB + 4
    d = torch.empty(500, 1000)           # 8 MB + 4 + 2 MB: below the peak
    assert meter.current == 2 * MB4 + F32 + 500 * 1000 * F32
    peak, split = meter.stop()
    assert peak == 3 * MB4 + F32
    assert split == {"weights": 0, "lora": 0, "grads": 0, "optimizer": 0, "activations": 0, "other": peak}
    del b, c, s, d, v, t


def test_the_split_is_what_is_live_at_the_peak_by_identity():
    meter = PeakMeter()
    meter.start(fixed={"weights": 1000})
    kept = torch.ones(1000, 1000)        # 4 MB, labelled below
    gone = torch.ones(1000, 1000)        # 4 MB, freed before the peak
    meter.label([kept, kept.view(-1)], "activations")  # the same storage twice counts once
    meter.label([gone], "grads")
    del gone
    tmp = torch.zeros(2000, 1000)        # 8 MB: the peak is kept + tmp + weights
    outside = torch.tensor([1.0, 2.0])   # may be made outside any op; labelled later
    del tmp
    meter.label([outside], "optimizer")  # counted from now on, after the peak
    peak, split = meter.stop()
    assert peak == 1000 + MB4 + 2 * MB4
    assert split["weights"] == 1000 and split["activations"] == MB4 and split["grads"] == 0
    assert split["optimizer"] == 0 and split["other"] == 2 * MB4
    assert sum(split.values()) == peak
    assert tuple(split) == SPLIT_CATEGORIES


def test_abort_pops_the_mode_and_keeps_nothing():
    meter = PeakMeter()
    meter.start()
    x = torch.ones(10)
    meter.abort()
    assert not meter.active
    y = x * 2  # no longer seen
    assert meter.current == 10 * F32
    del x, y


def test_a_step_with_more_storages_than_followed_has_no_figure():
    meter = PeakMeter(max_records=3)
    meter.start()
    kept = [torch.ones(10) * i for i in range(5)]
    assert meter.stop() is None and meter.overflowed and not meter.active
    del kept


def test_forwards_outside_a_step_are_never_metered(tmp_path):
    model = nn.Linear(4, 4)
    probe = Probe(tmp_path, name="loose", device="cpu", activations_every=1, sample_hz=1)
    probe.start()
    probe.attach_model(model)
    for _ in range(3):  # no step_begin / step_end: activations per forward, no peak meter
        model(torch.ones(2, 4)).sum().backward()
        assert not probe._peak_meter.active
    model.zero_grad(set_to_none=True)
    probe.step_begin()
    model(torch.ones(2, 4)).sum().backward()
    assert probe._peak_meter.active
    probe.step_end(1)
    assert not probe._peak_meter.active
    probe.finish("finished", step=1)
    snap = next(e for e in read_events(tmp_path) if e["kind"] == "snapshot" and e.get("step") == 1)
    # by hand: weight and bias (20 floats) throughout; the input (2 x 4 floats, made before the
    # forward, saved: counted from the forward's end); the output (8 floats) is freed once summed;
    # the sum (1), the seed gradient (1; the output's gradient is its expanded view), the weight's
    # gradient (16) and the bias's (4): no optimizer measured them, so they are other here
    split = snap["tensor_peak_split"]
    assert snap["tensor_peak"] == (20 + 8 + 1 + 1 + 16 + 4) * F32 == sum(split.values())
    assert split == {"weights": 0, "lora": 20 * F32, "grads": 0, "optimizer": 0, "activations": 8 * F32,
                     "other": (1 + 1 + 16 + 4) * F32}


def _train_tiny(run_dir: Path, gradient_checkpointing: bool, seq: int = 64) -> list[dict]:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(Path(__file__).resolve().parents[2] / "examples" / "tiny-llama"))
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    probe = Probe(run_dir, name="peak", device="cpu", activations_every=2, sample_hz=1)
    probe.start()
    probe.attach_model(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    probe.attach_optimizer(opt)
    for step in range(1, 5):
        probe.step_begin()
        ids = torch.randint(3, 512, (2, seq))
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        del out
        probe.step_end(step)
    probe.finish("finished", step=4)
    return [e for e in read_events(run_dir) if e["kind"] == "snapshot" and e.get("step")]


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_tiny_model_measured_steps_carry_the_true_peak(tmp_path, gradient_checkpointing):
    batch, seq, vocab = 2, 64, 512
    snaps = _train_tiny(tmp_path, gradient_checkpointing, seq)
    measured = [s for s in snaps if "tensor_peak" in s]
    assert [s["step"] for s in measured] == [1, 3]  # activations_every = 2: the meter on those only
    assert all(s.get("activations_measured") is False for s in snaps if s["step"] in (2, 4))
    for s in snaps:
        assert check_event(s) is None
    for s in measured:
        cats, split, peak = s["categories"], s["tensor_peak_split"], s["tensor_peak"]
        assert sum(split.values()) == peak
        assert split["weights"] == cats["weights"] and split["lora"] == cats["lora"]
        # the peak is in the loss's backward (log_softmax's gradient), before any LoRA gradient
        assert split["grads"] == 0
        assert split["optimizer"] == (0 if s["step"] == 1 else cats["optimizer"])
        # nll_loss's saved target (int64 ids) and total weight (one float) are freed by then
        assert cats["activations"] - split["activations"] == batch * seq * 8 + F32
        logits = batch * seq * vocab * F32
        # the model's logits, nll_loss's gradient and log_softmax's gradient: three logits-sized
        # buffers in no category, and two scalars (the loss's gradient and the loss).
        if not gradient_checkpointing:
            assert split["other"] == 3 * logits + 2 * F32
        else:
            assert split["other"] > 3 * logits
        assert peak > sum(cats.values())


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(h)))


class _Net(nn.Module):
    def __init__(self, width: int, checkpointed: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block(width) for _ in range(2))
        self.head = nn.Linear(width, 1)
        self.checkpointed = checkpointed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.checkpointed else block(x)
        return self.head(x).sum()


@pytest.mark.parametrize("checkpointed", [False, True])
def test_the_recomputed_layer_is_other(tmp_path, checkpointed):
    batch, width = 256, 128
    torch.manual_seed(0)
    model = _Net(width, checkpointed)
    probe = Probe(tmp_path, name="ckpt", device="cpu", activations_every=1, sample_hz=1)
    probe.start()
    probe.attach_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe.attach_optimizer(opt)
    probe.step_begin()
    model(torch.randn(batch, width)).backward()
    opt.step()
    opt.zero_grad()
    probe.step_end(1)
    probe.finish("finished", step=1)
    snap = next(e for e in read_events(tmp_path) if e["kind"] == "snapshot" and e.get("step") == 1)
    split = snap["tensor_peak_split"]
    assert sum(split.values()) == snap["tensor_peak"]
    wide = batch * 4 * width * F32  # one (batch, 4 x width) float32 tensor
    if checkpointed:
        # the block's recomputed up-projection and relu output (held by the recomputation, not
        # saved when the forward ended) and the gradient flowing through them
        assert snap["categories"]["activations"] < wide
        assert split["other"] >= 3 * wide
    else:
        # the up-projection and relu output are saved activations; in other only the gradients
        assert split["activations"] >= 2 * wide
        assert split["other"] < 3 * wide


def test_a_failing_meter_never_reaches_training(tmp_path, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("meter bug")

    monkeypatch.setattr(PeakMeter, "_seen_outputs", broken)  # inside every op: swallowed there
    monkeypatch.setattr(PeakMeter, "label", broken)  # in the probe's hooks: the part is switched off
    model = nn.Linear(4, 4)
    probe = Probe(tmp_path, name="broken", device="cpu", activations_every=1, sample_hz=1)
    probe.start()
    probe.attach_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe.attach_optimizer(opt)
    for step in (1, 2):
        probe.step_begin()
        model(torch.ones(2, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
        probe.step_end(step)
    probe.finish("finished", step=2)
    events = read_events(tmp_path)
    snaps = [e for e in events if e["kind"] == "snapshot" and e.get("step")]
    assert [s["step"] for s in snaps] == [1, 2]
    assert all("tensor_peak" not in s for s in snaps)
    assert all(s["categories"]["activations"] == 8 * F32 for s in snaps)  # the probe's figures stand
    assert "tensor peak" in probe.guard.off
    assert "meter bug" in probe.guard.failed["tensor peak"]


def test_under_another_dispatch_mode_the_meter_stays_out():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Outer(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    meter = PeakMeter()
    with Outer():
        meter.start()
        assert not meter.active
        x = torch.ones(4) * 2
    assert meter.stop() is None and x.sum() == 8
