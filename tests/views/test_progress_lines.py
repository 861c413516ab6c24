"""The headless progress lines of a followed run (`run --headless`, `attach --headless`)."""

from __future__ import annotations

from io import StringIO

from ftwatch.runlog.event_reader import EventDecoder
from ftwatch.runlog.events import encode
from ftwatch.runlog.state import RunState
from ftwatch.views.headless.report import ProgressPrinter


def _history(last_step: int) -> list[dict]:
    lines = [encode("header", {"name": "long", "max_steps": 40000,
                               "device": {"type": "cpu", "name": "x86_64", "capacity": 2**34}}, 0.0),
             encode("phase", {"name": "training", "max_steps": 40000}, 1.0)]
    lines += [encode("snapshot", {"phase": "training", "step": step, "categories": {"weights": 1000}}, 1.0 + step)
              for step in range(1, last_step + 1)]
    return EventDecoder().feed("".join(lines))


def _followed(events: list[dict]) -> tuple[ProgressPrinter, RunState, StringIO]:
    out, state = StringIO(), RunState()
    printer = ProgressPrinter(out, every=4000)
    for event in events:
        state.apply(event)
        printer.handle(state, event)
    return printer, state, out


def test_attaching_to_a_running_run_says_where_it_stands_now():
    printer, state, out = _followed(_history(2503))
    assert [line.split("] ", 1)[1].split(" |")[0] for line in out.getvalue().splitlines() if "step " in line] \
        == ["step 1/40000"]
    printer.catch_up(state)
    assert out.getvalue().splitlines()[-1].split("] ", 1)[1].startswith("step 2503/40000 |")
    before = out.getvalue()
    printer.catch_up(state)  # once
    assert out.getvalue() == before


def test_no_second_line_when_the_last_step_was_printed():
    printer, state, out = _followed(_history(4000))
    before = out.getvalue()
    printer.catch_up(state)
    assert out.getvalue() == before and before.splitlines()[-1].split("] ", 1)[1].startswith("step 4000/40000 |")
