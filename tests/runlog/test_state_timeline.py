"""The timeline of a replay is the same points the plain per-key merge gives: the fast paths of
``state._merge`` (a breakdown merged again into a point that already holds its maxima) change no
figure. The expected points come from a reference timeline written out here, fed the very points
the fold adds."""

from __future__ import annotations

import pytest

from conftest import FIXTURES_ROOT
from ftwatch.runlog import state as state_module
from ftwatch.runlog.event_reader import read_events
from ftwatch.runlog.state import RunState, Timeline, TimelinePoint

LOGS = FIXTURES_ROOT / "logs"


def reference_merge(a: TimelinePoint, b: TimelinePoint) -> TimelinePoint:
    """The merge as specified: the larger usage's time and usage, the later known step, and per
    category the larger of the two (a missing category counts 0)."""
    keep = b if b.used >= a.used else a
    keys = set(a.categories) | set(b.categories)
    cats = {k: max(a.categories.get(k, 0), b.categories.get(k, 0)) for k in keys}
    return TimelinePoint(t=keep.t, step=b.step if b.step is not None else a.step, used=keep.used, categories=cats)


def reference_timeline(points: list[TimelinePoint], capacity: int) -> list[tuple]:
    """Buckets of ``stride`` points merged left to right; when ``capacity`` points are stored they are
    merged pairwise and the stride doubles. As plain tuples (time, step, used, categories)."""
    capacity = max(capacity, 4)
    stored: list[TimelinePoint] = []
    stride, bucket = 1, []
    for point in points:
        bucket.append(point)
        if len(bucket) < stride:
            continue
        merged = bucket[0]
        for other in bucket[1:]:
            merged = reference_merge(merged, other)
        stored.append(merged)
        bucket = []
        if len(stored) >= capacity:
            pairs = [stored[i:i + 2] for i in range(0, len(stored), 2)]
            stored = [reference_merge(*pair) if len(pair) == 2 else pair[0] for pair in pairs]
            stride *= 2
    if bucket:
        merged = bucket[0]
        for other in bucket[1:]:
            merged = reference_merge(merged, other)
        stored.append(merged)
    return [(p.t, p.step, p.used, dict(p.categories)) for p in stored]


def replayed(log, capacity: int, monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple], list[TimelinePoint]]:
    """The fold's timeline of ``log`` (as tuples) and the points the fold added to it, in order."""
    added: list[TimelinePoint] = []
    original = Timeline.add

    def spy(self: Timeline, point: TimelinePoint) -> None:
        added.append(TimelinePoint(point.t, point.step, point.used, dict(point.categories)))
        original(self, point)

    monkeypatch.setattr(Timeline, "add", spy)
    state = RunState(timeline_capacity=capacity)
    state.apply_all(list(read_events(log)))
    monkeypatch.setattr(Timeline, "add", original)
    return [(p.t, p.step, p.used, dict(p.categories)) for p in state.timeline.all_points()], added


@pytest.mark.parametrize("name", ["cuda-finished", "cpu-stopped", "cpu-finished"])
@pytest.mark.parametrize("capacity", [4, 16, 64, 2048])
def test_a_replays_timeline_equals_the_reference_merge(name: str, capacity: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    points, added = replayed(LOGS / name / "events.jsonl", capacity, monkeypatch)
    assert len(added) > 100 and sum(p.categories != {} for p in added) > 50  # samples between snapshots
    assert points == reference_timeline(added, capacity)
    if capacity < len(added):  # the compaction ran: the peaks of every category survived it
        for category in ("weights", "activations"):
            assert max(p[3].get(category, 0) for p in points) == max(p.categories.get(category, 0) for p in added)


def test_a_long_run_with_a_new_breakdown_every_few_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthetic: 3,000 samples, a snapshot every third one with its own breakdown (activations
    rising and falling), a timeline of 32 points: buckets of many samples across many snapshots."""
    events = [{"v": 1, "t": 0.0, "kind": "header", "name": "r", "device": {"type": "cuda", "capacity": 1 << 34}}]
    for i in range(3000):
        t = 1.0 + i / 10
        events.append({"v": 1, "t": t, "kind": "sample", "nvml": {"process": (1 << 30) + (i * 7919) % 1000}})
        if i % 3 == 2:
            cats = {"weights": 1000, "activations": (i * 104729) % 5000}
            if i % 9 == 8:
                cats["grads"] = i  # a category some breakdowns lack
            events.append({"v": 1, "t": t, "kind": "snapshot", "step": i // 3, "categories": cats})
    added: list[TimelinePoint] = []
    original = Timeline.add
    monkeypatch.setattr(Timeline, "add", lambda self, p: (added.append(
        TimelinePoint(p.t, p.step, p.used, dict(p.categories))), original(self, p)))
    state = RunState(timeline_capacity=32)
    state.apply_all(events)
    got = [(p.t, p.step, p.used, dict(p.categories)) for p in state.timeline.all_points()]
    assert len(added) == 3000 and got == reference_timeline(added, 32)
    assert max(p[3]["activations"] for p in got) == max(p.categories.get("activations", 0) for p in added)


def test_merging_a_breakdown_again_reuses_the_merged_one() -> None:
    first, second = {"weights": 10, "activations": 5}, {"weights": 10, "activations": 3, "grads": 2}
    merged = state_module._merge(TimelinePoint(1.0, 1, 100, first), TimelinePoint(2.0, 2, 90, second))
    assert merged.categories == {"weights": 10, "activations": 5, "grads": 2}
    again = state_module._merge(merged, TimelinePoint(3.0, 2, 120, second))  # the next sample, same snapshot
    assert again.categories is merged.categories and (again.t, again.step, again.used) == (3.0, 2, 120)
    before = state_module._merge(TimelinePoint(0.5, 1, 80, first), merged)  # compaction: the older neighbour
    assert before.categories is merged.categories and before.t == 1.0
    fresh = state_module._merge(merged, TimelinePoint(4.0, 3, 50, {"weights": 10, "activations": 9}))
    assert fresh.categories == {"weights": 10, "activations": 9, "grads": 2}
    assert first == {"weights": 10, "activations": 5} and second == {"weights": 10, "activations": 3, "grads": 2}
