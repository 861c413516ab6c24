"""Live analysis inside the training process: the forecaster's warnings go into the run log.

The forecaster runs in its own thread, fed by a queue that the event writer fills as it writes,
so the training loop only pays for a queue put. Warnings are written as ``warning`` events, so
every viewer (and a replay next morning) sees the same warnings, even with no viewer attached.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

from ftwatch.analysis.forecast import Forecaster
from ftwatch.runlog.event_writer import EventWriter
from ftwatch.training.probe.guard import say

#: ``suggest(warning, last_snapshot, last_sample) -> suggestions``
Suggest = Callable[[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None], list[dict[str, Any]]]


class LiveAnalysis:
    """Feeds a run's own events to a :class:`Forecaster` and writes the warnings it raises."""

    def __init__(self, writer: EventWriter, forecaster: Forecaster, suggest: Suggest | None = None) -> None:
        self.writer = writer
        self.forecaster = forecaster
        self.suggest = suggest
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._last_snapshot: dict[str, Any] | None = None
        self._last_sample: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, name="ftwatch-analysis", daemon=True)
        writer.listeners.append(self._enqueue)
        self._thread.start()

    def _enqueue(self, event: dict[str, Any]) -> None:
        if event["kind"] not in ("warning", "exit"):
            self._queue.put(event)

    def _run(self) -> None:
        try:
            self._analyse()
        except Exception as exc:  # analysis must never take training down
            self._stopped(exc)

    def _analyse(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            if event["kind"] == "snapshot":
                self._last_snapshot = event
            elif event["kind"] == "sample":
                self._last_sample = event
            try:
                warnings = self.forecaster.observe(event)
            except Exception as exc:
                self._stopped(exc)
                return
            for warning in warnings:
                if self.suggest is not None and not warning.get("suggestions"):
                    try:
                        warning["suggestions"] = self.suggest(warning, self._last_snapshot, self._last_sample)
                    except Exception:
                        warning["suggestions"] = []
                self.writer.emit("warning", **warning)

    def _stopped(self, exc: BaseException) -> None:
        """The forecast failed: stop feeding it (the queue would grow all the run long), record it once."""
        with contextlib.suppress(ValueError):
            self.writer.listeners.remove(self._enqueue)
        message = f"live forecast stopped ({type(exc).__name__}: {exc}); training goes on without warnings"
        say(message)
        self.writer.emit("note", code="forecast_failed", message=message)

    def close(self, timeout: float = 5.0) -> None:
        """Analyse what is queued, then stop (call before the exit event is written)."""
        with contextlib.suppress(ValueError):
            self.writer.listeners.remove(self._enqueue)
        self._queue.put(None)
        self._thread.join(timeout)
