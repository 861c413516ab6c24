"""Tensor accounting on small hand-built modules whose byte counts are known from their shapes."""

import torch
from torch import nn

from ftwatch.training.probe.accounting import (
    ActivationMeter,
    grad_bytes,
    model_bytes,
    optimizer_state_bytes,
    parameter_counts,
    unique_storage_bytes,
)

F32 = 4


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.head = nn.Linear(8, 100, bias=False)
        self.head.weight = self.embed.weight  # tied, as in many LMs
        self.adapter = nn.Linear(8, 8, bias=False)
        self.register_buffer("scale", torch.ones(5))
        for p in (self.embed.weight,):
            p.requires_grad_(False)


def test_tied_storage_counted_once_and_buffers_are_weights():
    model = Tied()
    assert model_bytes(model) == {"weights": 100 * 8 * F32 + 5 * F32, "lora": 8 * 8 * F32}
    assert parameter_counts(model) == (100 * 8 + 8 * 8, 8 * 8)


def test_base_only_counts_every_parameter_as_weights():
    model = nn.Linear(4, 3)
    assert model_bytes(model, base_only=True) == {"weights": (4 * 3 + 3) * F32, "lora": 0}


def test_real_storage_counts_for_lower_precision_and_views():
    w = torch.zeros(64, 64, dtype=torch.uint8)  # e.g. packed 4-bit weights: 1 byte holds two values
    view = w[:32]
    assert unique_storage_bytes([w, view]) == 64 * 64
    assert unique_storage_bytes([torch.zeros(10, dtype=torch.bfloat16)]) == 20


def test_activation_meter_counts_saved_tensors_not_parameters():
    torch.manual_seed(0)
    layer = nn.Linear(16, 32)
    meter = ActivationMeter()
    meter.exclude(layer.parameters())
    x = torch.randn(4, 16)
    meter.start()
    y = torch.relu(layer(x))
    meter.stop()
    y.sum().backward()
    # addmm saves its input x (4x16) for the weight gradient; relu saves its output (4x32); the
    # weight itself is saved too but is a parameter and excluded
    assert meter.step_peak == (4 * 16 + 4 * 32) * F32


def test_activation_meter_counts_a_storage_once_and_keeps_the_step_peak():
    meter = ActivationMeter()
    x = torch.randn(10, 10, requires_grad=True)
    meter.start()
    (x * x).sum()  # mul saves x twice: one storage
    meter.stop()
    assert meter.current == 10 * 10 * F32
    meter.start()
    (x[:2] * 3).sum()  # saves nothing sizeable (a scalar is not saved)
    meter.stop()
    assert meter.step_peak == 10 * 10 * F32
    meter.reset_step()
    assert meter.step_peak == 0


def test_tensors_saved_by_a_discarded_branch_do_not_count():
    meter = ActivationMeter()
    x = torch.randn(100, requires_grad=True)
    meter.start()
    a = x.exp()  # exp saves its result: 100 floats, alive with `a`
    branch = (x * 3).sin()  # sin saves x * 3, freed with the branch below
    del branch
    meter.stop()
    assert meter.current == 100 * F32
    a.sum().backward()


def test_no_grad_forward_saves_nothing():
    meter = ActivationMeter()
    layer = nn.Linear(8, 8)
    meter.start()
    with torch.no_grad():
        layer(torch.randn(2, 8))
    meter.stop()
    assert meter.current == 0


def test_grads_and_adamw_state():
    torch.manual_seed(0)
    a = nn.Linear(10, 20, bias=False)
    b = nn.Linear(20, 5, bias=True)
    params = list(a.parameters()) + list(b.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    (b(a(torch.randn(3, 10)))).sum().backward()
    n = 10 * 20 + 20 * 5 + 5
    assert grad_bytes(params) == n * F32
    assert optimizer_state_bytes(opt) == 0  # state appears at the first step
    opt.step()
    # exp_avg + exp_avg_sq per parameter, and one float32 step counter per parameter tensor
    assert optimizer_state_bytes(opt) == 2 * n * F32 + 3 * F32


def test_sgd_without_momentum_has_no_state():
    p = nn.Parameter(torch.randn(4))
    opt = torch.optim.SGD([p], lr=0.1)
    p.sum().backward()
    opt.step()
    assert optimizer_state_bytes(opt) == 0


def test_optimizer_state_meter_follows_state_created_late():
    from ftwatch.training.probe.accounting import OptimizerStateMeter

    a, b = nn.Parameter(torch.randn(100)), nn.Parameter(torch.randn(50))
    opt = torch.optim.AdamW([a, b], lr=1e-3)
    meter = OptimizerStateMeter()
    a.sum().backward()  # only `a` has a gradient: only its state is created
    opt.step()
    assert meter.measure(opt) == 2 * 100 * F32 + F32
    assert meter.measure(opt) == 2 * 100 * F32 + F32  # unchanged state, same figure
    (a.sum() + b.sum()).backward()
    opt.step()  # now `b` gets state too
    assert meter.measure(opt) == 2 * 150 * F32 + 2 * F32
