"""The CSV of a recorded run (``ftwatch replay --csv``): one row per device sample, with the breakdown
then; streamed, so any length of log in constant memory. A multi-process run gives every rank's
rows, one rank after the other, with a leading ``rank`` column.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ftwatch.runlog.event_reader import EventDecoder, read_events
from ftwatch.runlog.events import TENSOR_CATEGORIES
from ftwatch.runlog.ranks import find_rank_dirs
from ftwatch.views.headless.replay_report import LogUnreadable, no_events_message

#: ``--csv`` columns: where the run stands, the breakdown then, and the sample's device figures.
CSV_COLUMNS: tuple[str, ...] = ("t", "elapsed", "phase", "step", *TENSOR_CATEGORIES, "rss", "allocated",
                                "reserved", "nvml_used", "nvml_process")


def csv_rows(events: Iterable[dict[str, Any]]) -> Iterator[list[Any]]:
    """One row per ``sample`` event (see :data:`CSV_COLUMNS`); unknown figures are ``None``.

    The categories are the latest snapshot's (the breakdown at that time), ``step`` the last
    training step completed (``None`` before the first), ``elapsed`` seconds since the first event.
    """
    first_t: float | None = None
    categories: dict[str, Any] = {}
    step: int | None = None
    phase: str | None = None
    for event in events:
        t = float(event["t"])
        if first_t is None:
            first_t = t
        kind = event["kind"]
        if kind == "sample":
            cuda = event.get("cuda") or {}
            nvml = event.get("nvml") or {}
            yield [event["t"], round(t - first_t, 4), event.get("phase") or phase, step,
                   *(categories.get(c) for c in TENSOR_CATEGORIES), event.get("rss"), cuda.get("allocated"),
                   cuda.get("reserved"), nvml.get("used"), nvml.get("process")]
        elif kind == "snapshot":
            categories = event.get("categories") or {}
            if event.get("step") is not None:
                step = int(event["step"])
        elif kind == "phase":
            phase = event.get("name")


def print_csv(path: Path, out: Any) -> int:
    """Write the time series as CSV (streamed: any length of log in constant memory)."""
    decoder = EventDecoder()
    writer = csv.writer(out, lineterminator="\n")
    events = read_events(path, decoder)
    first = next(events, None)
    if first is None:
        raise LogUnreadable(no_events_message(decoder.stats))
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(_chain(first, events)))
    return 0


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest


def print_csv_ranks(run_dir: Path, out: Any) -> int:
    """The CSV of every rank, one after the other, with a leading ``rank`` column."""
    writer = csv.writer(out, lineterminator="\n")
    decoder = EventDecoder()
    wrote_header = False
    for rank, path in find_rank_dirs(run_dir).items():
        for row in csv_rows(read_events(path, decoder)):
            if not wrote_header:
                writer.writerow(("rank", *CSV_COLUMNS))
                wrote_header = True
            writer.writerow((rank, *row))
    if not wrote_header:
        raise LogUnreadable(no_events_message(decoder.stats))
    return 0
