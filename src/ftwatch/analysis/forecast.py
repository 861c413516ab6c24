"""Live out-of-memory forecast: fold the event stream, warn before the run runs out of memory.

:class:`Forecaster` reads the same events every viewer reads (``docs/events.md``) and returns
warning dicts (``code``, ``level``, ``message``, ``category``, ``step``, ``steps_to_oom``,
``suggestions``) when something changes, plus a ``risk`` level (``ok``/``watch``/``danger``).

How it reads memory. Each optimizer step's ``snapshot`` gives the step's peak, so the sawtooth of
forward and backward inside a step never reaches the trend. The *occupied* figure of a step is
what is unavailable to the next allocation: on CUDA the process part of the categories (tensors,
``other``, ``cache``, ``non_torch``; else ``allocated_peak``) plus ``other_processes``; on CPU the
tensor categories. Capacity is ``header.device.capacity`` (the budget or the RAM on CPU).

Warnings, each emitted when it appears or its level rises, never once per step:

- ``oom_risk``: headroom below a threshold or OOM forecast within N steps, with hysteresis
  (enter watch below 15% headroom, leave above 20%; see the constants).
- ``leak``: one category rising step after step (:data:`LEAK_UP_FRACTION` of its step-to-step
  changes up) that longer sequences do not explain.
- ``long_sequence``: a batch longer than any before raised the peak; the peak-per-token slope
  projects what ``max_length`` would need and the longest sequence that fits.
- ``alloc_retries``: ``cuda.alloc_retries`` rose, so the allocator flushed its cache to survive.
- ``load_will_not_fit``: while the model loads, the device fills past a share of capacity, or
  ``expected_load_bytes`` exceeds the capacity from the start.

The pieces: the trend maths is :mod:`ftwatch.analysis.forecast_trend`, the steps kept and the
projections on them :mod:`ftwatch.analysis.forecast_state`, the levels and thresholds
:mod:`ftwatch.analysis.forecast_levels`, and every warning but ``oom_risk``
:mod:`ftwatch.analysis.forecast_checks`; this module folds the events and judges the OOM risk.
"""

from __future__ import annotations

from typing import Any

from ftwatch.analysis.forecast_checks import ForecastChecks, _grows, _per_step
from ftwatch.analysis.forecast_levels import (
    DANGER_ENTER_HEADROOM,
    DANGER_ENTER_STEPS,
    DANGER_EXIT_HEADROOM,
    DANGER_EXIT_STEPS,
    LEVELS,
    WATCH_ENTER_HEADROOM,
    WATCH_ENTER_STEPS,
    WATCH_EXIT_HEADROOM,
    WATCH_EXIT_STEPS,
    _level_max,
)
from ftwatch.analysis.forecast_state import WARMUP_STEPS, StepPoint
from ftwatch.common.units import format_bytes
from ftwatch.runlog.occupancy import step_occupied

#: An ``oom_risk`` at an unchanged level is repeated only when its forecast has halved and at
#: least this many steps have passed since the last one.
REFRESH_MIN_STEPS = 20

_SKIP_CATEGORIES = ("free", "other_processes")


def _sample_used(sample: dict[str, Any], is_cuda: bool = True) -> int | None:
    """Device usage during loading: NVML's device-wide figure, else this process's, else the
    allocator's. On a CPU run there is none: the budget stands for a GPU, and the process RSS
    (interpreter and libraries included) is not what would sit on it."""
    if not is_cuda:
        return None
    nvml = sample.get("nvml") or {}
    for value in (nvml.get("used"), nvml.get("process"), (sample.get("cuda") or {}).get("reserved")):
        if isinstance(value, (int, float)):
            return int(value)
    return None


# --- the forecaster -----------------------------------------------------------------------------

class Forecaster(ForecastChecks):
    """Folds events into an OOM forecast; :meth:`observe` returns the warnings each event raises.

    ``expected_load_bytes`` (what loading the model will add, from a pre-flight estimate) lets
    a load that cannot fit be called out when loading starts; ``max_length`` (``[data]
    max_length``) lets a longer-sequence jump be projected to the longest batch the run can get.

    After each training snapshot ``last_forecast`` holds the latest figures for display:
    ``level_bytes`` (the peak level now), ``headroom`` (share of capacity left), ``slope``
    (bytes per step, 0 without a significant trend) and ``steps_to_oom`` (or ``None``).
    """

    # -- public -------------------------------------------------------------------------------
    @property
    def risk(self) -> str:
        """The overall level now: the highest of the oom, leak, sequence, retry and load states."""
        leak = _level_max("ok", *(s["level"] for s in self.leaks.values()))
        return _level_max(self.oom_level, leak, self.seq_level, self.retry_level, self.load_level)

    def observe(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Fold one event; return the warnings it raises (usually none)."""
        handler = getattr(self, "_on_" + str(event.get("kind")), None)
        if handler is None:
            return []
        return handler(event) or []

    def observe_all(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fold several events; all the warnings they raised, in order."""
        out: list[dict[str, Any]] = []
        for event in events:
            out += self.observe(event)
        return out

    # -- events ---------------------------------------------------------------------------------
    def _on_header(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        device = event.get("device") or {}
        cap = device.get("capacity")
        self.capacity = int(cap) if isinstance(cap, (int, float)) and cap > 0 else None
        self.is_cuda = device.get("type") == "cuda"
        steps = event.get("max_steps")
        self.max_steps = int(steps) if isinstance(steps, int) and steps > 0 else None
        return []

    def _on_phase(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        self.phase = event.get("name")
        if self.phase != "loading_model":
            self.load_level = "ok"
            return []
        self._load_base = self._last_used
        return self._check_expected_load()

    def _on_sample(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        used = _sample_used(event, self.is_cuda)
        out = self._check_retries(event)
        phase = event.get("phase") or self.phase
        if phase == "loading_model" and used is not None:
            if self.phase != "loading_model":  # no phase event seen (attached mid-load)
                self.phase, self._load_base = "loading_model", self._last_used
            out += self._check_load(used)
        self._last_used = used if used is not None else self._last_used
        return out

    def _on_snapshot(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        step = event.get("step")
        if not isinstance(step, int):
            if not self.is_cuda and event.get("phase") == "loading_model":  # CPU: the loaded weights
                return self._check_load(step_occupied(event, False) or 0)
            return []
        self.step = step
        occupied = step_occupied(event, self.is_cuda)
        if occupied is None:
            return []
        seq = event.get("seq_len")
        cats = {k: int(v) for k, v in (event.get("categories") or {}).items()
                if isinstance(v, (int, float)) and k not in _SKIP_CATEGORIES}
        point = StepPoint(step=step, occupied=occupied, categories=cats,
                          seq_len=int(seq) if isinstance(seq, (int, float)) and seq > 0 else None)
        out = self._check_long_sequence(point)
        self.points.append(point)
        self._expire_retries(step)
        if step <= WARMUP_STEPS:
            return out
        out += self._check_leaks()
        risk = self._check_oom_risk()
        # One warning per step for the same cause: a more specific one already says it.
        if risk and not any(LEVELS.index(w["level"]) >= LEVELS.index(risk["level"]) for w in out):
            out.append(risk)
        return out

    # -- oom risk ---------------------------------------------------------------------------------
    def _next_oom_level(self, headroom: float, steps: int | None) -> str:
        def soon(limit: int) -> bool:
            return steps is not None and steps <= limit

        danger_in = headroom < DANGER_ENTER_HEADROOM or soon(DANGER_ENTER_STEPS)
        danger_stay = headroom < DANGER_EXIT_HEADROOM or soon(DANGER_EXIT_STEPS)
        watch_in = headroom < WATCH_ENTER_HEADROOM or soon(WATCH_ENTER_STEPS)
        watch_stay = headroom < WATCH_EXIT_HEADROOM or soon(WATCH_EXIT_STEPS)
        if danger_in or (self.oom_level == "danger" and danger_stay):
            return "danger"
        if watch_in or (self.oom_level != "ok" and watch_stay):
            return "watch"
        return "ok"

    def _check_oom_risk(self) -> dict[str, Any] | None:
        window = self._window()
        if self.capacity is None or not window:
            return None
        fc = self._forecast(window)
        self.last_forecast = fc
        previous, self.oom_level = self.oom_level, self._next_oom_level(fc["headroom"], fc["steps_to_oom"])
        rose = LEVELS.index(self.oom_level) > LEVELS.index(previous)
        if not (rose or self._refresh_due(fc["steps_to_oom"])):
            return None
        self._oom_last = (window[-1].step, fc["steps_to_oom"])
        category = self._driver(window, fc["slope"] > 0)
        return self._warning("oom_risk", self.oom_level, self._oom_message(fc, category), category,
                             window[-1].step, fc["steps_to_oom"])

    def _refresh_due(self, steps: int | None) -> bool:
        if self.oom_level == "ok" or self._oom_last is None or steps is None or self.step is None:
            return False
        last_step, last_steps = self._oom_last
        halved = last_steps is None or steps <= last_steps // 2
        return halved and self.step - last_step >= REFRESH_MIN_STEPS

    def _oom_message(self, fc: dict[str, Any], category: str | None) -> str:
        assert self.capacity is not None
        cap, level = self.capacity, fc["level_bytes"]
        where = f"peak {format_bytes(level)} of {format_bytes(cap)} ({max(fc['headroom'], 0):.0%} headroom)"
        if fc["slope"] > 0 and fc["steps_to_oom"] is not None:
            growth = f"{_grows(category or 'memory')} {_per_step(fc['slope'])}"
            return f"{growth}, OOM in about {fc['steps_to_oom']} steps; {where}"
        if fc["headroom"] <= 0:
            return f"{where}: the next step at this peak will not fit"
        return f"{where}; the largest swings come from {category or 'the step peak'}"
