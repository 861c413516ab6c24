"""The live OOM forecast, fed synthetic runs built from the real event fields (docs/events.md).

Every stream goes through ``ftwatch.runlog.events.encode`` and ``EventDecoder`` first, so the events are
the ones a real log would hold. Expected steps and levels are computed here from the synthetic
numbers, never read back from the forecaster.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

import pytest

from ftwatch.analysis.forecast import Forecaster
from ftwatch.analysis.forecast_checks import LOAD_DANGER_SHARE, LOAD_WATCH_SHARE
from ftwatch.analysis.forecast_levels import DANGER_ENTER_STEPS, WATCH_ENTER_HEADROOM, WATCH_EXIT_HEADROOM
from ftwatch.analysis.forecast_trend import theil_sen
from ftwatch.runlog.event_reader import EventDecoder
from ftwatch.runlog.events import encode

MiB, GiB = 1024**2, 1024**3
CAP = 24 * GiB
CONTEXT = 500 * MiB  # non_torch: CUDA context and libraries
T0 = 1_700_000_000.0

Event = tuple[str, dict[str, Any]]


# --- synthetic stream helpers ------------------------------------------------------------------------

def header(capacity: int = CAP, device: str = "cuda", max_steps: int | None = None,
           budget: int | None = None) -> Event:
    return ("header", {
        "run_id": "test", "name": "synthetic", "config_path": None, "pid": 4242, "host": "h", "user": "u",
        "versions": {"ftwatch": "0.1.0", "python": "3.11", "torch": "2.5", "transformers": "4.46", "peft": "0.13"},
        "model": "tiny", "device": {"type": device, "index": 0 if device == "cuda" else None, "name": "GPU",
                                    "capacity": capacity,
                                    "capacity_source": "nvml" if device == "cuda" else "budget"},
        "budget": budget, "sample_hz": 10, "max_steps": max_steps, "rank": 0, "world_size": 1,
    })


def phase(name: str) -> Event:
    return ("phase", {"name": name})


def sample(phase_name: str, used: int, allocated: int | None = None, retries: int = 0,
           capacity: int = CAP) -> Event:
    """A CUDA device sample: NVML sees ``used`` (this process only), the allocator ``allocated``."""
    allocated = used - CONTEXT if allocated is None else allocated
    return ("sample", {
        "phase": phase_name, "rss": 3 * GiB, "sys_used": 40 * GiB, "sys_total": 64 * GiB, "cpu_percent": 99.0,
        "cuda": {"allocated": allocated, "reserved": used - CONTEXT, "max_allocated": allocated,
                 "alloc_retries": retries, "ooms": 0},
        "nvml": {"total": capacity, "used": used, "free": capacity - used, "process": used, "others": [],
                 "util": 97},
    })


def cuda_snapshot(step: int, activations: int, other: int = 600 * MiB, cache: int = GiB,
                  seq_len: int = 512, weights: int = 8 * GiB, capacity: int = CAP) -> Event:
    """A training snapshot whose categories add up to the capacity, as on a CUDA run."""
    tensors = {"weights": weights, "lora": 40 * MiB, "grads": 40 * MiB, "optimizer": 80 * MiB,
               "activations": activations}
    peak = sum(tensors.values()) + other
    cats = {**tensors, "other": other, "cache": cache, "non_torch": CONTEXT, "other_processes": 0}
    cats["free"] = max(capacity - sum(cats.values()), 0)
    return ("snapshot", {"phase": "training", "step": step, "loss": 2.0, "lr": 1e-4, "tokens": 4 * seq_len,
                         "seq_len": seq_len, "categories": cats, "allocated_peak": peak,
                         "reserved": peak + cache})


def occupied(snapshot: Event) -> int:
    """What the test considers unavailable after a step: every category but ``free``."""
    return sum(v for k, v in snapshot[1]["categories"].items() if k != "free")


def sawtooth_samples(step: int, peak_allocated: int, n: int = 5) -> Iterator[Event]:
    """Samples inside a step: allocation rising through forward, falling through backward."""
    low = peak_allocated - 3 * GiB
    for i in range(n):
        frac = [0.1, 0.6, 1.0, 0.5, 0.2][i % 5]
        allocated = int(low + frac * (peak_allocated - low))
        yield sample("training", used=peak_allocated + GiB + CONTEXT, allocated=allocated)


def roundtrip(events: list[Event]) -> list[dict[str, Any]]:
    """Encode then decode the stream, as a log would carry it; every event must survive."""
    text = "".join(encode(kind, fields, T0 + i * 0.1) for i, (kind, fields) in enumerate(events))
    decoder = EventDecoder()
    decoded = decoder.feed(text) + decoder.finish()
    lost = sorted(decoder.stats.unknown_kind_names)
    assert not lost, f"EventDecoder dropped events of kind(s) {lost}: ftwatch.runlog.events.KINDS must list them"
    assert len(decoded) == len(events)
    return decoded


def start(capacity: int = CAP, max_steps: int | None = None) -> list[Event]:
    return [header(capacity, max_steps=max_steps), phase("loading_model"), sample("loading_model", CONTEXT),
            phase("applying_lora"), phase("preparing_trainer"), phase("training")]


def feed(forecaster: Forecaster, events: list[Event]) -> list[dict[str, Any]]:
    """Replay the stream; every warning, tagged with the index of the event that raised it."""
    out: list[dict[str, Any]] = []
    for index, event in enumerate(roundtrip(events)):
        for warning in forecaster.observe(event):
            out.append({**warning, "_event": index})
    return out


def assert_warning_shape(warning: dict[str, Any]) -> None:
    assert set(warning) >= {"code", "level", "message", "category", "step", "steps_to_oom", "suggestions"}
    assert warning["level"] in ("watch", "danger")
    assert "\n" not in warning["message"] and warning["message"]
    assert warning["suggestions"] == []


# --- the robust slope -------------------------------------------------------------------------------

def test_theil_sen_ignores_an_outlier() -> None:
    xs = [float(i) for i in range(10)]
    ys = [100.0 + 5.0 * x for x in xs]
    ys[4] = 10_000.0
    slope, intercept = theil_sen(xs, ys)
    assert slope == pytest.approx(5.0)
    assert intercept == pytest.approx(100.0)


# --- a steady leak -----------------------------------------------------------------------------------

def leak_run(leak_per_step: int, category: str = "activations") -> tuple[list[Event], int, dict[int, int]]:
    """Steps with +``leak_per_step`` in ``category`` until the step that would cross capacity."""
    rng = random.Random(7)
    events = start()
    occupied_at: dict[int, int] = {}
    step = 0
    while True:
        step += 1
        noise = rng.randint(-20 * MiB, 20 * MiB)
        grow = leak_per_step * step
        snap = cuda_snapshot(step, activations=4 * GiB + noise + (grow if category == "activations" else 0),
                             other=600 * MiB + (grow if category == "other" else 0))
        if occupied(snap) > CAP:
            return events, step, occupied_at
        occupied_at[step] = occupied(snap)
        events += list(sawtooth_samples(step, snap[1]["allocated_peak"]))
        events.append(snap)


@pytest.mark.parametrize("category", ["activations", "other"])
def test_steady_leak_warns_well_before_capacity(category: str) -> None:
    events, crossing_step, occupied_at = leak_run(50 * MiB, category)
    forecaster = Forecaster()
    warnings = feed(forecaster, events)
    for w in warnings:
        assert_warning_shape(w)
    leaks = [w for w in warnings if w["code"] == "leak"]
    assert leaks, warnings
    first = leaks[0]
    assert first["category"] == category
    assert first["step"] <= crossing_step - 5
    rate = re.search(r"grows? ([0-9.]+) MiB/step", first["message"])
    assert rate is not None and float(rate.group(1)) == pytest.approx(50.0, rel=0.05)
    # Its forecast matches the steps actually left (independently: headroom / leak rate), within 10%.
    actual_left = (CAP - occupied_at[first["step"]]) / (50 * MiB)
    assert first["steps_to_oom"] == pytest.approx(actual_left, rel=0.10)
    # It escalates to danger before the crossing, and does not repeat itself every step.
    dangers = [w for w in warnings if w["level"] == "danger"]
    assert dangers and dangers[0]["step"] < crossing_step
    assert crossing_step - dangers[0]["step"] <= DANGER_ENTER_STEPS + 2
    assert len(warnings) <= 5
    assert forecaster.risk == "danger"


def test_leak_on_a_cpu_run_uses_the_tensor_categories() -> None:
    budget = 16 * GiB
    events: list[Event] = [header(budget, device="cpu", budget=budget), phase("training")]
    for step in range(1, 120):
        cats = {"weights": 4 * GiB, "lora": 20 * MiB, "grads": 20 * MiB, "optimizer": 40 * MiB,
                "activations": 2 * GiB + 64 * MiB * step}
        events.append(("snapshot", {"phase": "training", "step": step, "loss": 1.0, "lr": 1e-4,
                                    "tokens": 512, "seq_len": 128, "categories": cats}))
    warnings = feed(Forecaster(), events)
    leak = next(w for w in warnings if w["code"] == "leak")
    assert leak["category"] == "activations"
    tensor_total = 4 * GiB + 80 * MiB + 2 * GiB + 64 * MiB * leak["step"]
    assert leak["steps_to_oom"] == pytest.approx((budget - tensor_total) / (64 * MiB), rel=0.10)


# --- a stable run --------------------------------------------------------------------------------------

def test_stable_run_of_1000_steps_with_sawtooth_raises_nothing() -> None:
    rng = random.Random(11)
    events = start(max_steps=1000)
    for step in range(1, 1001):
        snap = cuda_snapshot(step, activations=4 * GiB + rng.randint(-120 * MiB, 120 * MiB),
                             other=600 * MiB + rng.randint(-40 * MiB, 40 * MiB))
        events += list(sawtooth_samples(step, snap[1]["allocated_peak"]))
        events.append(snap)
    forecaster = Forecaster()
    assert feed(forecaster, events) == []
    assert forecaster.risk == "ok"


def test_variable_sequence_lengths_are_not_a_trend() -> None:
    rng = random.Random(5)
    events = start()
    for step in range(1, 400):
        seq = rng.choice([256, 384, 512, 768, 1024])
        events.append(cuda_snapshot(step, activations=4 * MiB * seq, seq_len=seq))
    forecaster = Forecaster(max_length=1024)
    assert feed(forecaster, events) == []
    assert forecaster.risk == "ok"


def test_slowly_lengthening_sequences_are_not_a_leak() -> None:
    events = start()
    for step in range(1, 200):
        seq = 256 + 2 * step  # a length-sorted dataset: sequences grow, memory with them
        events.append(cuda_snapshot(step, activations=4 * MiB * seq, seq_len=seq))
    warnings = feed(Forecaster(), events)
    assert [w for w in warnings if w["code"] == "leak"] == []


# --- hysteresis ---------------------------------------------------------------------------------------

def at_headroom(step: int, headroom: float) -> Event:
    """A snapshot whose occupied share of the capacity is ``1 - headroom``."""
    base = occupied(cuda_snapshot(step, activations=0))
    return cuda_snapshot(step, activations=int((1 - headroom) * CAP) - base)


def test_value_oscillating_around_the_watch_threshold_warns_once() -> None:
    events = start()
    for step in range(1, 301):
        events.append(at_headroom(step, WATCH_ENTER_HEADROOM + (0.01 if step % 2 else -0.01)))
    forecaster = Forecaster()
    warnings = feed(forecaster, events)
    assert [(w["code"], w["level"]) for w in warnings] == [("oom_risk", "watch")]
    assert warnings[0]["step"] == 4  # step 3 is the first one after warm-up; its headroom is 16%
    assert forecaster.risk == "watch"


def test_slow_swings_inside_the_hysteresis_band_warn_once() -> None:
    events = start()
    for step in range(1, 401):
        block = (step // 60) % 2  # 60-step blocks: longer than the trend window
        events.append(at_headroom(step, 0.14 if block else (WATCH_ENTER_HEADROOM + WATCH_EXIT_HEADROOM) / 2))
    warnings = feed(Forecaster(), events)
    assert [(w["code"], w["level"]) for w in warnings] == [("oom_risk", "watch")]
    assert warnings[0]["step"] == 60


def test_leaving_the_band_and_coming_back_warns_again() -> None:
    events = start()
    for step in range(1, 401):
        block = (step // 100) % 2
        events.append(at_headroom(step, 0.14 if block else 0.30))
    forecaster = Forecaster()
    warnings = feed(forecaster, events)
    assert [(w["code"], w["level"], w["step"]) for w in warnings] == [
        ("oom_risk", "watch", 100), ("oom_risk", "watch", 300)]


def test_a_single_jump_is_not_forecast_as_growth() -> None:
    events = start()
    for step in range(1, 200):
        events.append(at_headroom(step, 0.40 if step < 100 else 0.25))
    forecaster = Forecaster()
    assert feed(forecaster, events) == []
    assert forecaster.risk == "ok"


# --- a longer sequence arriving -------------------------------------------------------------------------

def test_longer_sequence_projects_max_length() -> None:
    per_token = 8 * MiB
    base = occupied(cuda_snapshot(1, activations=0))
    events = start()
    for step in range(1, 21):
        events.append(cuda_snapshot(step, activations=per_token * 512, seq_len=512))
    events.append(cuda_snapshot(21, activations=per_token * 1024, seq_len=1024))
    warnings = feed(Forecaster(max_length=2048), events)
    assert [(w["code"], w["level"], w["step"]) for w in warnings] == [("long_sequence", "danger", 21)]
    fits = 1024 + (CAP - (base + per_token * 1024)) // per_token  # independent: tokens left / bytes per token
    assert f"up to about {fits} tokens" in warnings[0]["message"]
    assert "max_length 2048" in warnings[0]["message"]


# --- allocator retries ------------------------------------------------------------------------------------

def test_rising_alloc_retries_warn_then_escalate() -> None:
    events = start()
    retries_at = {31: 1, 40: 3, 45: 4}  # cumulative counter, rising in three distinct steps
    counter = 0
    for step in range(1, 121):
        snap = cuda_snapshot(step, activations=4 * GiB)
        counter = retries_at.get(step, counter)
        events.append(sample("training", used=15 * GiB, retries=counter))
        events.append(snap)
    forecaster = Forecaster()
    warnings = feed(forecaster, events)
    retry = [w for w in warnings if w["code"] == "alloc_retries"]
    # The sample raising the counter arrives before that step's snapshot: it belongs to the step before.
    assert [(w["level"], w["step"]) for w in retry] == [("watch", 30), ("danger", 44)]
    assert all(w["category"] == "cache" for w in retry)
    assert forecaster.risk == "ok"  # 75 quiet steps later


# --- loading -------------------------------------------------------------------------------------------------

def test_load_filling_the_device_warns_during_loading() -> None:
    events: list[Event] = [header(), phase("loading_model")]
    used_values = [CONTEXT + i * 250 * MiB for i in range(96)]  # up to about 23.9 GiB
    events += [sample("loading_model", used) for used in used_values]
    warnings = feed(Forecaster(), events)
    first_watch = next(i for i, used in enumerate(used_values) if used >= LOAD_WATCH_SHARE * CAP)
    first_danger = next(i for i, used in enumerate(used_values) if used >= LOAD_DANGER_SHARE * CAP)
    assert [(w["code"], w["level"], w["_event"]) for w in warnings] == [
        ("load_will_not_fit", "watch", 2 + first_watch), ("load_will_not_fit", "danger", 2 + first_danger)]
    assert all(w["step"] is None and w["category"] == "weights" for w in warnings)


def test_expected_load_larger_than_capacity_warns_at_loading_start() -> None:
    events: list[Event] = [header(), sample("loading_model", CONTEXT), phase("loading_model"),
                           sample("loading_model", CONTEXT + GiB)]
    warnings = feed(Forecaster(expected_load_bytes=30 * GiB), events)
    assert [(w["code"], w["level"], w["_event"]) for w in warnings] == [("load_will_not_fit", "danger", 2)]
    assert "will not fit" in warnings[0]["message"]


def test_a_load_that_fits_is_quiet_and_the_load_state_ends_with_loading() -> None:
    events: list[Event] = [header(), phase("loading_model")]
    events += [sample("loading_model", CONTEXT + i * 200 * MiB) for i in range(60)]  # up to ~12 GiB
    events.append(phase("applying_lora"))
    forecaster = Forecaster(expected_load_bytes=11 * GiB)
    assert feed(forecaster, events) == []
    assert forecaster.risk == "ok"
