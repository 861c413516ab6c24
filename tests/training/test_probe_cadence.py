"""Activation measurement cadence: a new input shape larger than every measured one is measured at
once; a repeated shape, or one no larger than a measured shape, is carried (and marked so) and
re-measured every `activations_every` forwards."""

from __future__ import annotations

import torch
from torch import nn

from ftwatch.runlog.event_reader import read_events
from ftwatch.training.probe.probe import Probe

F32 = 4


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.proj = nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(self.embed(input_ids)))


def _train(tmp_path, shapes: list[tuple[int, int]], every: int) -> list[dict]:
    torch.manual_seed(0)
    model = TinyLM()
    probe = Probe(tmp_path, name="cadence", device="cpu", activations_every=every, sample_hz=1)
    probe.start()
    probe.attach_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe.attach_optimizer(opt)
    for step, (batch, seq) in enumerate(shapes, 1):
        probe.step_begin()
        model(torch.randint(0, 50, (batch, seq))).sum().backward()
        opt.step()
        opt.zero_grad()
        probe.step_end(step)
    probe.finish("finished", step=len(shapes))
    return [e for e in read_events(tmp_path) if e["kind"] == "snapshot"]


def expected_activations(batch: int, seq: int) -> int:
    # the linear layer saves its input (the embedding output) and relu saves its output:
    # two (batch, seq, 8) float32 tensors; the embedding saves the integer ids (int64)
    return 2 * batch * seq * 8 * F32 + batch * seq * 8


def test_repeated_shapes_are_carried_between_measurements(tmp_path):
    snaps = _train(tmp_path, [(2, 5)] * 12, every=5)
    measured = [s["step"] for s in snaps if s.get("activations_measured", True)]
    assert measured == [1, 6, 11]  # one measured forward in every five
    assert {s["categories"]["activations"] for s in snaps} == {expected_activations(2, 5)}


def test_a_new_shape_is_measured_at_once(tmp_path):
    snaps = _train(tmp_path, [(2, 5), (2, 5), (4, 7), (2, 5)], every=100)
    by_step = {s["step"]: s for s in snaps}
    assert by_step[3].get("activations_measured", True)
    assert by_step[3]["categories"]["activations"] == expected_activations(4, 7)
    assert by_step[4].get("activations_measured") is False
    assert by_step[4]["categories"]["activations"] == expected_activations(2, 5)


def test_every_one_measures_every_forward(tmp_path):
    snaps = _train(tmp_path, [(3, 4)] * 4, every=1)
    assert all(s.get("activations_measured", True) for s in snaps)


def test_a_smaller_new_shape_carries_the_smallest_larger_measurement(tmp_path):
    # padded batches change shape at every step: only a new largest shape is measured at once
    shapes = [(4, 9), (2, 5), (4, 6), (3, 9), (4, 12), (4, 10)]
    snaps = _train(tmp_path, shapes, every=100)
    by_step = {s["step"]: s for s in snaps}
    measured = [step for step, s in by_step.items() if s.get("activations_measured", True)]
    assert measured == [1, 5]  # (4, 9) and (4, 12): no measured shape was as large
    acts = {step: s["categories"]["activations"] for step, s in by_step.items()}
    assert acts[2] == acts[3] == acts[4] == expected_activations(4, 9)  # an upper bound of each
    assert acts[6] == expected_activations(4, 12)  # (4, 10): only (4, 12) is as large in both
    assert all(acts[step] >= expected_activations(*shape) for step, shape in enumerate(shapes, 1))


def test_a_shape_larger_in_one_dimension_only_is_measured(tmp_path):
    snaps = _train(tmp_path, [(4, 5), (2, 9)], every=100)
    assert all(s.get("activations_measured", True) for s in snaps)
    assert snaps[1]["categories"]["activations"] == expected_activations(2, 9)


def test_the_bounds_kept_between_measurements_are_those_a_full_search_finds():
    """The bound a forward carries is kept per shape and brought up to date at each measurement
    (the search over every measured shape would run on every forward): random shapes and figures,
    re-measured shapes with higher and lower figures among them, against the plain search."""
    import random

    from ftwatch.training.probe.attach import ModelAttachment

    class Shapes(ModelAttachment):
        def __init__(self) -> None:
            self._activations_by_shape: dict = {}
            self._carried_bounds: dict = {}

    shapes, rnd = Shapes(), random.Random(0)

    def searched(key: tuple[int, int]) -> int | None:
        figures = shapes._activations_by_shape
        if key in figures:
            return figures[key]
        larger = [figure for shape, figure in figures.items() if shape[0] >= key[0] and shape[1] >= key[1]]
        return min(larger) if larger else None

    for _ in range(20_000):
        key = (rnd.choice([1, 2, 4]), rnd.randint(1, 60))
        if rnd.random() < 0.1:
            shapes._record_figure(key, rnd.randint(1, 10_000))
        assert shapes._carried_figure(key) == searched(key), key
