"""The forecaster's warnings beside the OOM risk: leaks, longer sequences, allocator retries, loading.

:class:`ForecastChecks` decides when each of them warns, at which level, and says why; the
figures it judges come from :class:`~ftwatch.analysis.forecast_state.ForecastState`.
"""

from __future__ import annotations

from typing import Any

from ftwatch.analysis.forecast_levels import (
    DANGER_ENTER_HEADROOM,
    DANGER_ENTER_STEPS,
    LEVELS,
    WATCH_ENTER_HEADROOM,
    _level_max,
)
from ftwatch.analysis.forecast_state import LEAK_MIN_STEPS, WARMUP_STEPS, ForecastState, StepPoint
from ftwatch.analysis.forecast_trend import TREND_WINDOW, Trend
from ftwatch.common.units import format_bytes

#: A leak state is dropped after this many steps without a significant rise.
LEAK_CLEAR_STEPS = TREND_WINDOW // 2

#: A batch is "longer" when its seq_len is this factor above every earlier one.
LONG_SEQ_FACTOR = 1.10

#: While loading, device usage past these shares of capacity warns.
LOAD_WATCH_SHARE = 0.85
LOAD_DANGER_SHARE = 0.95

#: Allocator retries in this many distinct steps within RETRY_WINDOW_STEPS escalate to danger;
#: the retry warning state clears after RETRY_WINDOW_STEPS quiet steps.
RETRY_DANGER_COUNT = 3
RETRY_WINDOW_STEPS = 50


def _per_step(rate: float) -> str:
    return f"{format_bytes(rate)}/step"


def _grows(name: str) -> str:
    """``"activations grow"``, ``"cache grows"``."""
    return f"{name} grow" if name.endswith("s") else f"{name} grows"


class ForecastChecks(ForecastState):
    """The leak, longer-sequence, allocator-retry and loading warnings, each raised when it rises."""

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _warning(code: str, level: str, message: str, category: str | None, step: int | None,
                 steps_to_oom: int | None = None) -> dict[str, Any]:
        return {"code": code, "level": level, "message": message, "category": category,
                "step": step, "steps_to_oom": steps_to_oom, "suggestions": []}

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
