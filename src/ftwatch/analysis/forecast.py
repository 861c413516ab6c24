"""Live out-of-memory forecast: fold the event stream, warn before the run runs out of memory.

:class:`Forecaster` reads the same events every viewer reads (``docs/events.md``) and returns
warning dicts (``code``, ``level``, ``message``, ``category``, ``step``, ``steps_to_oom``,
``suggestions``) when something changes, plus a ``risk`` level (``ok``/``watch``/``danger``).

How it reads memory. Each optimizer step's ``snapshot`` gives the step's peak, so the sawtooth of
forward and backward inside a step never reaches the trend. The *occupied* figure of a step is
what is unavailable to the next allocation: on CUDA the process part of the categories (tensors,
``other``, ``cache``, ``non_torch``; else ``allocated_peak``) plus ``other_processes``; on CPU the
tensor categories. Capacity is ``header.device.capacity`` (the budget or the RAM on CPU).

Trends are Theil-Sen slopes (the median of pairwise slopes) over the last :data:`TREND_WINDOW`
steps, for the total and per category, so a few long-sequence batches do not bend them. A slope
counts only when the rise it implies over the window is at least :data:`MIN_RISE_BYTES` and
:data:`RISE_NOISE_FACTOR` times the median absolute residual. The current level is the upper
envelope of the window (each step's peak carried forward along the slope), so the big batches
that have been seen, not the average one, set the headroom.

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
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import median
from typing import Any

from ftwatch.common.units import format_bytes
from ftwatch.runlog.occupancy import step_occupied

MiB = 1024**2

#: Risk levels, lowest first.
LEVELS: tuple[str, ...] = ("ok", "watch", "danger")

#: Headroom (share of capacity left at the peak) thresholds, with hysteresis: a level is entered
#: below its ENTER share and left only above its EXIT share.
WATCH_ENTER_HEADROOM = 0.15
WATCH_EXIT_HEADROOM = 0.20
DANGER_ENTER_HEADROOM = 0.05
DANGER_EXIT_HEADROOM = 0.08
#: Forecast thresholds: OOM expected within this many steps enters / keeps the level.
WATCH_ENTER_STEPS = 100
WATCH_EXIT_STEPS = 150
DANGER_ENTER_STEPS = 25
DANGER_EXIT_STEPS = 40

#: Steps of history the trends are fitted on, and the fewest a trend needs.
TREND_WINDOW = 48
MIN_TREND_STEPS = 8
#: Training steps ignored at the start (optimizer state and allocator cache appear there).
WARMUP_STEPS = 2
#: A trend counts when its rise over the window reaches this many bytes ...
MIN_RISE_BYTES = 32 * MiB
#: ... and this many times the median absolute residual around the fitted line, ...
RISE_NOISE_FACTOR = 3.0
#: ... and each half of the window rises at least at this share of the whole window's slope.
HALF_SLOPE_SHARE = 0.3

#: A leak needs this many steps and this share of step-to-step changes going up (or a rise
#: of :data:`LEAK_STRONG_FACTOR` times the noise).
LEAK_MIN_STEPS = 12
LEAK_UP_FRACTION = 0.6
LEAK_STRONG_FACTOR = 6.0
#: Growth counts as explained by sequence length when seq_len's relative growth per step is at
#: least this share of the category's relative growth per step.
SEQ_EXPLAINS_SHARE = 0.5
#: Categories that scale with the sequence length.
SEQ_SCALED = ("activations", "other", "cache")
#: A leak state is dropped after this many steps without a significant rise.
LEAK_CLEAR_STEPS = TREND_WINDOW // 2

#: A batch is "longer" when its seq_len is this factor above every earlier one; the bytes per
#: token are fitted only once this many steps with a seq_len have been seen.
LONG_SEQ_FACTOR = 1.10
MIN_SEQ_HISTORY = 3

#: While loading, device usage past these shares of capacity warns.
LOAD_WATCH_SHARE = 0.85
LOAD_DANGER_SHARE = 0.95

#: Allocator retries in this many distinct steps within RETRY_WINDOW_STEPS escalate to danger;
#: the retry warning state clears after RETRY_WINDOW_STEPS quiet steps.
RETRY_DANGER_COUNT = 3
RETRY_WINDOW_STEPS = 50

#: An ``oom_risk`` at an unchanged level is repeated only when its forecast has halved and at
#: least this many steps have passed since the last one.
REFRESH_MIN_STEPS = 20

_HISTORY = 256
_SKIP_CATEGORIES = ("free", "other_processes")


# --- robust trend ------------------------------------------------------------------------------

@dataclass
class Trend:
    """A Theil-Sen fit over a window: slope per step and what it implies."""

    slope: float
    rise: float
    noise: float
    significant: bool
    up_fraction: float


def theil_sen(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Median of the pairwise slopes and the matching median intercept (``(0, median)`` if flat in x)."""
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i])
              for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]]
    slope = median(slopes) if slopes else 0.0
    intercept = median(y - slope * x for x, y in zip(xs, ys, strict=True))
    return slope, intercept


def fit_trend(xs: list[float], ys: list[float]) -> Trend | None:
    """The robust trend of ``ys`` over ``xs``; ``None`` with fewer than :data:`MIN_TREND_STEPS` points."""
    if len(xs) < MIN_TREND_STEPS:
        return None
    slope, intercept = theil_sen(xs, ys)
    noise = median(abs(y - (intercept + slope * x)) for x, y in zip(xs, ys, strict=True))
    rise = slope * (xs[-1] - xs[0])
    diffs = [b - a for a, b in zip(ys[:-1], ys[1:], strict=True)]
    up = sum(1 for d in diffs if d > 0) / len(diffs) if diffs else 0.0
    significant = (slope > 0 and rise >= max(MIN_RISE_BYTES, RISE_NOISE_FACTOR * noise)
                   and _both_halves_rise(xs, ys, slope))
    return Trend(slope=slope, rise=rise, noise=noise, significant=significant, up_fraction=up)


def _both_halves_rise(xs: list[float], ys: list[float], slope: float) -> bool:
    """A growth, not one level shift: each half of the window rises at a good share of the slope.

    A single jump (a longer batch, the optimizer state appearing) tilts the fit over a window
    that straddles it, yet each half on its own is flat.
    """
    half = len(xs) // 2
    first, _ = theil_sen(xs[:half], ys[:half])
    second, _ = theil_sen(xs[half:], ys[half:])
    return min(first, second) >= HALF_SLOPE_SHARE * slope


def _rising_at_all(ys: list[float]) -> bool:
    """Cheap pre-check: the last third's median above the first third's (skips most flat series)."""
    third = max(len(ys) // 3, 1)
    return median(ys[-third:]) - median(ys[:third]) >= MIN_RISE_BYTES / 2


# --- per-step points -------------------------------------------------------------------------------

@dataclass
class StepPoint:
    """One optimizer step as the forecaster keeps it."""

    step: int
    occupied: int
    categories: dict[str, int]
    seq_len: int | None


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


def _per_step(rate: float) -> str:
    return f"{format_bytes(rate)}/step"


def _grows(name: str) -> str:
    """``"activations grow"``, ``"cache grows"``."""
    return f"{name} grow" if name.endswith("s") else f"{name} grows"


def _level_max(*levels: str) -> str:
    return max(levels, key=LEVELS.index)


# --- the forecaster -----------------------------------------------------------------------------

class Forecaster:
    """Folds events into an OOM forecast; :meth:`observe` returns the warnings each event raises.

    ``expected_load_bytes`` (what loading the model will add, from a pre-flight estimate) lets
    a load that cannot fit be called out when loading starts; ``max_length`` (``[data]
    max_length``) lets a longer-sequence jump be projected to the longest batch the run can get.

    After each training snapshot ``last_forecast`` holds the latest figures for display:
    ``level_bytes`` (the peak level now), ``headroom`` (share of capacity left), ``slope``
    (bytes per step, 0 without a significant trend) and ``steps_to_oom`` (or ``None``).
    """

    def __init__(self, expected_load_bytes: int | None = None, max_length: int | None = None) -> None:
        self.expected_load_bytes = expected_load_bytes
        self.max_length = max_length
        self.capacity: int | None = None
        self.is_cuda = False
        self.max_steps: int | None = None
        self.phase: str | None = None
        self.step: int | None = None
        self.points: deque[StepPoint] = deque(maxlen=_HISTORY)
        self.oom_level = "ok"
        self._oom_last: tuple[int, int | None] | None = None  # step, steps_to_oom of the last oom_risk
        self.leaks: dict[str, dict[str, Any]] = {}
        self.seq_level = "ok"  # only projections to max_length persist; the headroom is oom_level's
        self._seq_emitted = "ok"
        self._max_seq: int | None = None
        self.load_level = "ok"
        self._load_base: int | None = None
        self._last_used: int | None = None
        self._retries: int | None = None
        self._retry_steps: list[int] = []
        self.retry_level = "ok"
        self.last_forecast: dict[str, Any] = {}

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

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _warning(code: str, level: str, message: str, category: str | None, step: int | None,
                 steps_to_oom: int | None = None) -> dict[str, Any]:
        return {"code": code, "level": level, "message": message, "category": category,
                "step": step, "steps_to_oom": steps_to_oom, "suggestions": []}

    def _window(self) -> list[StepPoint]:
        recent = [p for p in self.points if p.step > WARMUP_STEPS]
        return recent[-TREND_WINDOW:]

    def _steps_until(self, level: float, slope: float) -> int | None:
        """Steps until ``level`` growing by ``slope`` per step crosses capacity (None: not growing)."""
        if self.capacity is None or slope <= 0:
            return None
        return max(int(math.floor((self.capacity - level) / slope)), 0)

    def _within_run(self, steps: int | None) -> int | None:
        """``steps`` unless the run's planned end comes first."""
        if steps is None or self.max_steps is None or self.step is None:
            return steps
        return steps if self.step + steps <= self.max_steps else None

    # -- oom risk ---------------------------------------------------------------------------------
    def _forecast(self, window: list[StepPoint]) -> dict[str, Any]:
        ys = [float(p.occupied) for p in window]
        trend = fit_trend([float(p.step) for p in window], ys) if _rising_at_all(ys) else None
        slope = trend.slope if trend is not None and trend.significant else 0.0
        now = window[-1].step
        level = max(p.occupied + slope * (now - p.step) for p in window)
        assert self.capacity is not None
        headroom = (self.capacity - level) / self.capacity
        steps = self._within_run(self._steps_until(level, slope))
        return {"level_bytes": int(level), "headroom": headroom, "slope": slope, "steps_to_oom": steps}

    def _driver(self, window: list[StepPoint], growing: bool) -> str | None:
        """The category behind the peak: the fastest-growing one, else the one that varies most."""
        names = {k for p in window for k in p.categories}
        if not names:
            return None
        if growing and len(window) >= MIN_TREND_STEPS:
            xs = [float(p.step) for p in window]
            slopes = {k: theil_sen(xs, [float(p.categories.get(k, 0)) for p in window])[0] for k in names}
            return max(slopes, key=lambda k: slopes[k])
        spread = {k: max(p.categories.get(k, 0) for p in window) - min(p.categories.get(k, 0) for p in window)
                  for k in names}
        if max(spread.values()) > 0:
            return max(spread, key=lambda k: spread[k])
        return max(names, key=lambda k: window[-1].categories.get(k, 0))

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

    # -- leaks -------------------------------------------------------------------------------------
    def _check_leaks(self) -> list[dict[str, Any]]:
        window = self._window()
        if len(window) < LEAK_MIN_STEPS:
            return []
        out: list[dict[str, Any]] = []
        for name in sorted({k for p in window for k in p.categories}):
            warning = self._check_leak(name, window)
            if warning is not None:
                out.append(warning)
        return out

    def _leak_trend(self, name: str, window: list[StepPoint]) -> Trend | None:
        points = [p for p in window if name in p.categories]
        ys = [float(p.categories[name]) for p in points]
        if len(points) < LEAK_MIN_STEPS or not _rising_at_all(ys):
            return None
        trend = fit_trend([float(p.step) for p in points], ys)
        if trend is None or not trend.significant:
            return None
        steady = trend.up_fraction >= LEAK_UP_FRACTION or trend.rise >= LEAK_STRONG_FACTOR * trend.noise
        if not steady or self._explained_by_seq_len(name, points, trend.slope, ys):
            return None
        return trend

    def _explained_by_seq_len(self, name: str, points: list[StepPoint], slope: float, ys: list[float]) -> bool:
        """True when sequences grow (relative to their size) at least about as fast as the category."""
        if name not in SEQ_SCALED:
            return False
        seq = [(float(p.step), float(p.seq_len)) for p in points if p.seq_len]
        if len(seq) < MIN_TREND_STEPS or median(ys) <= 0:
            return False
        seq_slope, _ = theil_sen([s for s, _ in seq], [v for _, v in seq])
        seq_rel = seq_slope / median(v for _, v in seq)
        return seq_rel > 0 and seq_rel >= SEQ_EXPLAINS_SHARE * slope / median(ys)

    def _check_leak(self, name: str, window: list[StepPoint]) -> dict[str, Any] | None:
        trend = self._leak_trend(name, window)
        state = self.leaks.get(name)
        if trend is None:
            if state is not None and self.step is not None and self.step - state["seen"] >= LEAK_CLEAR_STEPS:
                del self.leaks[name]
            return None
        level_now = max(p.occupied + trend.slope * (window[-1].step - p.step) for p in window)
        steps = self._within_run(self._steps_until(level_now, trend.slope))
        level = "danger" if steps is not None and steps <= DANGER_ENTER_STEPS else "watch"
        previous = state["level"] if state else None
        self.leaks[name] = {"level": _level_max(level, previous or "ok"), "seen": self.step, "slope": trend.slope}
        if previous is not None and LEVELS.index(level) <= LEVELS.index(previous):
            return None
        return self._warning("leak", level, self._leak_message(name, trend, len(window), steps), name,
                             window[-1].step, steps)

    def _leak_message(self, name: str, trend: Trend, span: int, steps: int | None) -> str:
        text = (f"{_grows(name)} {_per_step(trend.slope)} over the last {span} steps, "
                "not explained by longer sequences")
        if steps is not None:
            return f"{text}; OOM in about {steps} steps"
        if self.capacity is not None and self.max_steps is not None:
            return f"{text}; at this rate the run ends before memory does"
        return f"{text} (possible leak)"

    # -- longer sequences ---------------------------------------------------------------------------
    def _check_long_sequence(self, point: StepPoint) -> list[dict[str, Any]]:
        seq, previous_max = point.seq_len, self._max_seq
        if seq is None:
            return []
        self._max_seq = max(seq, previous_max or 0)
        if (previous_max is None or seq < LONG_SEQ_FACTOR * previous_max or self.capacity is None
                or point.step <= WARMUP_STEPS):
            return []
        per_token = self._bytes_per_token(point)
        if per_token is None:
            return []
        level, projected, message = self._sequence_verdict(point, per_token)
        if projected:
            self.seq_level = _level_max(self.seq_level, level)
        if LEVELS.index(level) <= LEVELS.index(self._seq_emitted):
            return []
        self._seq_emitted = level
        return [self._warning("long_sequence", level, message, "activations", point.step)]

    def _bytes_per_token(self, point: StepPoint) -> float | None:
        """Peak bytes per extra token of sequence, Theil-Sen over the steps seen (None: not positive)."""
        pairs = [(float(p.seq_len), float(p.occupied))
                 for p in self.points if p.seq_len and p.step > WARMUP_STEPS]
        if len(pairs) < MIN_SEQ_HISTORY:
            return None
        pairs.append((float(point.seq_len or 0), float(point.occupied)))
        slope, _ = theil_sen([s for s, _ in pairs], [o for _, o in pairs])
        return slope if slope > 0 else None

    def _sequence_verdict(self, point: StepPoint, per_token: float) -> tuple[str, bool, str]:
        """Level, whether it is a projection to ``max_length``, and the message."""
        assert self.capacity is not None and point.seq_len is not None
        cap, seq = self.capacity, point.seq_len
        fits = seq + int((cap - point.occupied) / per_token)
        head = (f"seq_len {seq} raised the peak to {format_bytes(point.occupied)} of {format_bytes(cap)} "
                f"({format_bytes(per_token * 128)} per 128 tokens); "
                f"sequences up to about {max(fits, 0)} tokens fit")
        if self.max_length is not None and self.max_length > seq:
            need = point.occupied + per_token * (self.max_length - seq)
            level = "danger" if need > cap else "watch" if need > (1 - WATCH_ENTER_HEADROOM) * cap else "ok"
            return level, True, f"{head}; max_length {self.max_length} would need {format_bytes(need)}"
        headroom = (cap - point.occupied) / cap
        level = ("danger" if headroom < DANGER_ENTER_HEADROOM
                 else "watch" if headroom < WATCH_ENTER_HEADROOM else "ok")
        return level, False, head

    # -- allocator retries ---------------------------------------------------------------------------
    def _check_retries(self, sample: dict[str, Any]) -> list[dict[str, Any]]:
        value = (sample.get("cuda") or {}).get("alloc_retries")
        if not isinstance(value, int):
            return []
        previous, self._retries = self._retries, value
        if previous is None or value <= previous:
            return []
        step = self.step if self.step is not None else -1
        if step not in self._retry_steps:
            self._retry_steps.append(step)
        self._retry_steps = [s for s in self._retry_steps if step - s < RETRY_WINDOW_STEPS]
        level = "danger" if len(self._retry_steps) >= RETRY_DANGER_COUNT else "watch"
        if LEVELS.index(level) <= LEVELS.index(self.retry_level):
            return []
        self.retry_level = level
        where = f"after step {self.step}" if self.step is not None else f"during {self.phase or 'start-up'}"
        return [self._warning(
            "alloc_retries", level,
            f"the CUDA allocator flushed its cache and retried {value - previous} allocation(s) {where} "
            f"({value} in all, in {len(self._retry_steps)} recent step(s)): "
            "memory is nearly full and steps slow down",
            "cache", self.step)]

    def _expire_retries(self, step: int) -> None:
        if self._retry_steps and step - self._retry_steps[-1] >= RETRY_WINDOW_STEPS:
            self._retry_steps = []
            self.retry_level = "ok"

    # -- loading ---------------------------------------------------------------------------------------
    def _check_expected_load(self) -> list[dict[str, Any]]:
        if self.expected_load_bytes is None or self.capacity is None:
            return []
        projected = (self._load_base or 0) + self.expected_load_bytes
        return self._load_warning(projected, projected=True)

    def _check_load(self, used: int) -> list[dict[str, Any]]:
        if self.capacity is None:
            return []
        out = self._load_warning(used, projected=False)
        if self.expected_load_bytes is not None and self._load_base is not None:
            out += self._load_warning(max(self._load_base + self.expected_load_bytes, used), projected=True)
        return out

    def _load_warning(self, amount: int, projected: bool) -> list[dict[str, Any]]:
        assert self.capacity is not None
        share = amount / self.capacity
        level = "danger" if share >= LOAD_DANGER_SHARE else "watch" if share >= LOAD_WATCH_SHARE else "ok"
        if LEVELS.index(level) <= LEVELS.index(self.load_level):
            return []
        self.load_level = level
        cap = format_bytes(self.capacity)
        if projected:
            verdict = "will not fit" if amount > self.capacity else "leaves little room for training"
            message = f"loading the model needs about {format_bytes(amount)} of {cap}: it {verdict}"
        else:
            message = f"loading has filled {format_bytes(amount)} of {cap} ({share:.0%}) and is still going"
        return [self._warning("load_will_not_fit", level, message, "weights", None)]
