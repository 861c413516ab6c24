"""The whole-log fold (typed blocks, :mod:`ftwatch.runlog.log_fold`) against the line-by-line fold.

The reference is the ordinary path every live viewer takes: :func:`read_events` and
:meth:`RunState.apply` one event at a time. Every log here, clean or damaged, must give the same
state and the same reader counts both ways; a spy checks that the typed path really took the
blocks (a fold that always fell back would pass the comparison and be no faster).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from ftwatch.runlog import typed_events
from ftwatch.runlog.event_reader import EventDecoder, read_events
from ftwatch.runlog.events import encode
from ftwatch.runlog.log_fold import fold_log
from ftwatch.runlog.state import RunState

pytestmark = pytest.mark.skipif(not typed_events.AVAILABLE, reason="msgspec is not installed")

GiB = 1 << 30


def _sample(rng: random.Random, t: float) -> dict[str, Any]:
    fields: dict[str, Any] = {"phase": "training", "cpu_percent": rng.choice([97.5, 100, None])}
    if rng.random() < 0.9:
        fields["rss"] = rng.randrange(GiB, 4 * GiB)
    shape = rng.random()
    if shape < 0.6:
        # often one of a few values: equal usages, where the timeline keeps the later point
        reserved = rng.choice([8 * GiB, 9 * GiB]) if rng.random() < 0.5 else rng.randrange(GiB, 60 * GiB)
        fields["cuda"] = {"allocated": reserved - 5, "reserved": reserved, "max_allocated": reserved, "ooms": 0}
        fields["nvml"] = {"total": 80 * GiB, "process": reserved + rng.choice([0, 512, 1 << 29]),
                          "others": [[4242, GiB]], "util": 90}
    elif shape < 0.75:
        fields["cuda"] = {"reserved": rng.randrange(GiB, 60 * GiB)}
        fields["nvml"] = {"process": None}
    elif shape < 0.8:
        fields["nvml"] = {}
    return {"kind": "sample", "t": t, **fields}


def _snapshot(rng: random.Random, t: float, step: int | None) -> dict[str, Any]:
    names = ["weights", "lora", "grads", "optimizer", "activations", "other", "cache", "non_torch",
             "other_processes", "free"]
    if rng.random() < 0.1:
        names = names[:5] + ["tensor_total"]  # another set of names (a CPU run's)
    if rng.random() < 0.05:
        names = list(reversed(names))  # the same names in another order
    cats: dict[str, int | None] = {name: rng.randrange(0, 20 * GiB) for name in names}
    if rng.random() < 0.1:
        cats[rng.choice(names)] = None  # a figure the run did not know
    fields: dict[str, Any] = {"phase": "training", "step": step, "categories": cats,
                              "allocated_peak": rng.randrange(GiB, 70 * GiB)}
    if step is not None:
        fields.update(loss=rng.choice([round(rng.uniform(0.5, 3), 4), None, 2]), lr=1e-4, tokens=512)
    if rng.random() < 0.2:
        fields["tensor_peak"] = rng.randrange(GiB, 30 * GiB)
        fields["tensor_peak_split"] = {"activations": rng.randrange(0, GiB), "other": 7}
    if rng.random() < 0.03:
        fields["categories"] = None
    return {"kind": "snapshot", "t": t, **fields}


#: Lines the ordinary decoder skips, counts or makes safe: each must come out the same in a block.
DAMAGE = [
    "{not json at all",
    '{"v":1,"t":5,"kind":"sample","rss":"many"}',  # a field of the wrong type
    '{"v":1,"t":5,"kind":"sample","rss":1.5}',  # a float where bytes go
    '{"v":1,"t":5,"kind":"sample","rss":true}',
    '{"v":1,"t":5,"kind":"sample","rss":9223372036854775808}',  # past int64
    '{"v":1,"t":5,"kind":"snapshot","step":-1}',
    '{"v":1,"t":5,"kind":"snapshot","categories":{"weights":-3}}',
    '{"v":1,"kind":"sample","rss":1}',  # no time
    '{"v":1,"t":5,"kind":"sample","rss":1}{"v":1,"t":5,"kind":"sample","rss":2}',  # two on a line
    '{"v":1,"t":5,"kind":"sample","rss":1} trailing',
    '{"v":1,"t":5,"kind":"sample","rss":1,"later_field":{"a":[1,2]}}',  # a field this version does not know
    '{"v":1,"t":5,"kind":"sample","cuda":{"reserved":1,"newer":2}}',
    '{"v":1,"t":5,"kind":"sample","phase":"train\\u001b[2Jing"}',  # a control character, escaped
    '{"v":1,"t":5,"kind":"sample","phase":"tr\u00e4ining"}',  # not ASCII
    '{"v":1,"t":5,"kind":"sample","rss":1,"rss":2}',  # a duplicate key: the last counts
    '{"v":1,"t":5,"kind":"warp_drive","x":1}',  # a kind from a newer version
    '{"v":1,"t":5, "kind": "sample", "rss": 3}',  # spelt with spaces
    '   {"v":1,"t":5,"kind":"sample","rss":4}',  # leading blanks
    "",
    "   ",
    '{"v":1,"t":5,"kind":"sample","rss":5}\r',  # CRLF
    '{"v":1,"t":5,"kind":"sample","nvml":{"others":[[1,2,3]]}}',
    '{"v":1,"t":5,"kind":"sample","nvml":null,"cuda":null}',
    "[1,2,3]",
    '{"v":1,"t":1e400,"kind":"sample"}',
    '{"v":1,"t":5,"kind":"snapshot","step":3,"loss":NaN}',
]


def _write_log(path: Path, seed: int, device: str, damage: bool, steps: int = 400) -> None:
    rng = random.Random(seed)
    t = 1_760_000_000.0
    lines = [encode("header", {"run_id": "r", "name": "fold", "pid": 1,
                               "device": {"type": device, "capacity": 80 * GiB}}, t),
             encode("phase", {"name": "loading_model"}, t)]
    for _ in range(rng.randrange(0, 15)):
        t += 0.1
        lines.append(encode("sample", {k: v for k, v in _sample(rng, t).items() if k not in ("kind", "t")}, t))
    lines.append(encode("phase", {"name": "training", "max_steps": steps}, t))
    for step in range(1, steps + 1):
        for _ in range(rng.choice([0, 1, 3, 10, 10, 10, 25])):
            t += 0.1 if rng.random() > 0.02 else -0.5  # now and then the clock steps back
            event = _sample(rng, t)
            lines.append(encode("sample", {k: v for k, v in event.items() if k not in ("kind", "t")}, t))
        event = _snapshot(rng, t, step if rng.random() > 0.05 else None)
        lines.append(encode("snapshot", {k: v for k, v in event.items() if k not in ("kind", "t")}, t))
        if rng.random() < 0.02:
            lines.append(encode("warning", {"code": "oom_risk", "level": "watch", "message": "near", "step": step}, t))
        if damage and rng.random() < 0.05:
            lines.append(rng.choice(DAMAGE) + "\n")
    lines.append(encode("exit", {"status": "finished", "step": steps}, t + 1))
    path.write_text("".join(lines), encoding="utf-8")


def _view(state: RunState) -> dict[str, Any]:
    """Everything a viewer reads of a state."""
    return {
        "summary": state.summary(),
        "timeline": [(p.t, p.step, p.used, dict(p.categories)) for p in state.timeline.all_points()],
        "stride": state.timeline.stride,
        "phases": [vars(p) for p in state.phases],
        "counts": (state.samples, state.snapshots, state.step, state.loss, state.first_t, state.last_t,
                   state.peak_rss, state.steps_per_second),
        "tensor_peak": (state.tensor_peak, state.tensor_peak_split, state.tensor_peak_step),
        "last": [state.last_sample, state.last_snapshot, state.last_tensor_peak],
        "last_types": [type(e.get("t")) if e else None for e in (state.last_sample, state.last_snapshot)],
        "categories": state.categories,
    }


def _line_by_line(path: Path, capacity: int) -> tuple[RunState, EventDecoder]:
    state, decoder = RunState(timeline_capacity=capacity), EventDecoder()
    for event in read_events(path, decoder):
        state.apply(event)
    return state, decoder


@pytest.fixture
def typed_share(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many events reached the state through the typed blocks."""
    folded: list[int] = []
    original = RunState.apply_typed

    def spy(self: RunState, events: list[Any], block: bytes) -> None:
        folded.append(len(events))
        original(self, events, block)

    monkeypatch.setattr(RunState, "apply_typed", spy)
    return folded


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_a_clean_log_folds_the_same_and_through_the_blocks(tmp_path: Path, seed: int, device: str,
                                                           typed_share: list[int]) -> None:
    log = tmp_path / "events.jsonl"
    _write_log(log, seed, device, damage=False)
    for capacity, chunk in ((2048, 1 << 18), (16, 4096), (5, 777)):  # compactions; chunks cut mid-line
        expected, reference = _line_by_line(log, capacity)
        typed_share.clear()
        state, decoder = fold_log(log, RunState(timeline_capacity=capacity), chunk_bytes=chunk)
        assert _view(state) == _view(expected)
        assert decoder.stats == reference.stats
        assert sum(typed_share) > 0.9 * reference.stats.events


@pytest.mark.parametrize("seed", range(8))
def test_a_damaged_log_folds_the_same(tmp_path: Path, seed: int) -> None:
    log = tmp_path / "events.jsonl"
    _write_log(log, 100 + seed, "cuda", damage=True)
    for capacity, chunk in ((2048, 1 << 18), (8, 3000)):
        expected, reference = _line_by_line(log, capacity)
        state, decoder = fold_log(log, RunState(timeline_capacity=capacity), chunk_bytes=chunk)
        assert _view(state) == _view(expected)
        assert decoder.stats == reference.stats


@pytest.mark.parametrize("line", DAMAGE)
def test_each_damaged_line_counts_as_the_ordinary_reader_counts_it(tmp_path: Path, line: str) -> None:
    log = tmp_path / "events.jsonl"
    _write_log(log, 7, "cuda", damage=False, steps=30)
    text = log.read_text().split("\n")
    text.insert(len(text) // 2, line)
    log.write_text("\n".join(text))
    expected, reference = _line_by_line(log, 2048)
    state, decoder = fold_log(log)
    assert _view(state) == _view(expected)
    assert decoder.stats == reference.stats


def test_a_blank_line_and_a_line_of_two_events_in_one_block_read_as_the_ordinary_reader_reads_them(
        tmp_path: Path) -> None:
    """The one shape a count of lines against events could miss: one line too few (blank) and one
    too many (two events on it)."""
    log = tmp_path / "events.jsonl"
    _write_log(log, 9, "cuda", damage=False, steps=30)
    text = log.read_text().split("\n")
    at = len(text) // 2
    two = text[at] + text[at + 1]
    assert '"kind":"sample"' in text[at] and '"kind":"sample"' in text[at + 1]
    text[at:at + 2] = ["", two, ""]
    log.write_text("\n".join(text))
    expected, reference = _line_by_line(log, 2048)
    state, decoder = fold_log(log)
    assert reference.stats.corrupt_lines == 1
    assert _view(state) == _view(expected)
    assert decoder.stats == reference.stats


def test_a_snapshot_with_an_unknown_category_figure_folds_and_replays(tmp_path: Path) -> None:
    """A ``null`` category passes the reader's checks; merging it into the timeline once crashed the
    line-by-line fold (``None > int``)."""
    log = tmp_path / "events.jsonl"
    lines = [encode("header", {"device": {"type": "cuda", "capacity": 100}}, 1.0),
             encode("phase", {"name": "training"}, 1.0)]
    for i in range(300):
        lines.append(encode("snapshot", {"step": i, "categories": {"weights": None if i % 2 else 5, "lora": i}},
                            2.0 + i))
        lines.append(encode("sample", {"rss": 10 + i, "cuda": {"reserved": 100 + i}}, 2.5 + i))
    log.write_text("".join(lines))
    expected, _ = _line_by_line(log, 16)
    state, _ = fold_log(log, RunState(timeline_capacity=16))
    assert _view(state) == _view(expected)
    assert expected.peaks == {"weights": 5, "lora": 299}  # the known figures, by hand
    assert max(p.categories["lora"] for p in expected.timeline.all_points()) == 299
