"""`ftwatch ls`'s reading of a run from the tail of its log."""

from __future__ import annotations

from ftwatch.commands.ls import TAIL_BYTES, where_it_stands
from ftwatch.runlog.events import encode


def test_the_phase_of_a_long_run_comes_from_its_snapshots_once_the_phase_event_left_the_tail(tmp_path):
    log = tmp_path / "events.jsonl"
    lines = [encode("header", {"name": "long", "max_steps": 3000,
                               "device": {"type": "cpu", "name": "x86_64", "capacity": 2**34}}, 0.0),
             encode("phase", {"name": "training", "max_steps": 3000}, 1.0)]
    step, written = 0, 0
    while written < 3 * TAIL_BYTES:
        step += 1
        line = encode("snapshot", {"phase": "training", "step": step, "categories": {"weights": 1000}}, 1.0 + step)
        lines.append(line)
        written += len(line)
    log.write_text("".join(lines))
    stands = where_it_stands(log)
    assert (stands["phase"], stands["step"], stands["max_steps"]) == ("training", step, 3000)
