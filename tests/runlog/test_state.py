"""The run state fold and the summary object, on hand-made streams with known answers."""

from ftwatch.runlog.state import RunState, Timeline, TimelinePoint

MiB = 1024**2


def ev(kind, t, **fields):
    return {"v": 1, "t": float(t), "kind": kind, **fields}


def cpu_run() -> list[dict]:
    cats = {"weights": 600 * MiB, "lora": 10 * MiB, "grads": 10 * MiB, "optimizer": 20 * MiB, "activations": 0}
    events = [ev("header", 0, name="r", model="m", max_steps=3,
                 device={"type": "cpu", "name": "x86", "capacity": 8192 * MiB, "capacity_source": "budget"}),
              ev("sample", 0.1, rss=100 * MiB), ev("phase", 0.2, name="loading_model"),
              ev("sample", 0.5, rss=700 * MiB), ev("sample", 0.6, rss=650 * MiB),
              ev("phase", 1.0, name="applying_lora"), ev("sample", 1.1, rss=660 * MiB),
              ev("phase", 1.2, name="training"), ev("model", 1.2, params_total=100, params_trainable=5)]
    for step, acts in ((1, 300), (2, 500), (3, 400)):
        events.append(ev("sample", 1 + step, rss=(900 + step) * MiB))
        events.append(ev("snapshot", 1.5 + step, phase="training", step=step, loss=5.0 - step,
                         categories={**cats, "activations": acts * MiB}))
    events.append(ev("exit", 5.0, status="finished", step=3, by="worker"))
    return events


def test_summary_peaks_phases_and_status():
    state = RunState()
    state.apply_all(cpu_run())
    s = state.summary()
    assert s["status"] == "finished" and s["steps"] == 3 and s["loss"] == 2.0
    assert s["capacity_bytes"] == 8192 * MiB and s["capacity_source"] == "budget"
    assert s["peak_bytes"]["activations"] == 500 * MiB
    assert s["peak_bytes"]["weights"] == 600 * MiB
    # total is the worst single snapshot, not the sum of per-category peaks
    assert s["peak_bytes"]["total"] == (600 + 10 + 10 + 20 + 500) * MiB
    assert s["peak_rss_bytes"] == 903 * MiB
    phases = {p["name"]: p for p in s["phases"]}
    assert list(phases) == ["loading_model", "applying_lora", "training"]
    assert phases["loading_model"]["peak_bytes"] == 700 * MiB
    assert phases["loading_model"]["added_bytes"] == (650 - 100) * MiB
    assert phases["applying_lora"]["added_bytes"] == (660 - 650) * MiB  # last sample before it, last in it
    assert s["params_total"] == 100


def test_a_log_without_exit_reads_as_running_then_failed_in_summary():
    state = RunState()
    state.apply_all(cpu_run()[:-1])
    assert state.status == "running"
    assert state.summary()["status"] == "failed"


def test_cuda_total_includes_the_loading_peak_seen_by_nvml():
    state = RunState()
    state.apply(ev("header", 0, device={"type": "cuda", "capacity": 24 * 1024 * MiB}))
    state.apply(ev("phase", 0, name="loading_model"))
    state.apply(ev("sample", 1, rss=1, cuda={"reserved": 20_000 * MiB}, nvml={"process": 22_000 * MiB}))
    state.apply(ev("exit", 2, status="oom", oom={"phase": "loading_model"}))
    s = state.summary()
    assert s["peak_bytes"]["total"] == 22_000 * MiB
    assert s["status"] == "oom" and s["oom"]["phase"] == "loading_model"


def test_timeline_stays_bounded_keeps_the_start_and_the_peak():
    line = Timeline(capacity=64)
    for i in range(10_000):
        line.add(TimelinePoint(t=float(i), step=i, used=5000 if i == 7777 else i % 100))
    points = line.all_points()
    assert len(points) <= 64 + 1
    assert points[0].t < 10_000 / 64 * 2  # the first bucket still starts the series
    assert max(p.used for p in points) == 5000  # the spike survived every merge
    assert [p.t for p in points] == sorted(p.t for p in points)


def test_lost_events_come_from_the_exit_else_from_the_notes() -> None:
    from ftwatch.views.headless.report import summary_text

    state = RunState()
    state.apply(ev("header", 1, name="x", device={"type": "cpu", "capacity": 1 << 30}))
    for t, n in ((2, 3), (3, 2)):
        state.apply(ev("note", t, code="events_lost", message=f"{n} lost", lost_events=n))
    assert state.summary()["lost_events"] == 5  # the run's own exit is missing: the notes' sum
    state.apply(ev("exit", 4, status="finished", step=4, lost_events=7))
    assert state.summary()["lost_events"] == 7  # the exit counts every loss, the last one too
    assert "7 events could not be written" in summary_text(state)


def test_time_never_runs_backwards_in_the_fold() -> None:
    """An event stamped before its predecessor (a clock stepped back, a crafted exit at t=0) is
    taken at the predecessor's time: no negative duration, the run's length is its real span."""
    state = RunState()
    for event in (ev("header", 100, name="x", device={"type": "cpu", "capacity": 1 << 30}),
                  ev("phase", 101, name="training"), ev("sample", 130, rss=MiB),
                  ev("exit", 0, status="finished", step=3)):
        state.apply(event)
    summary = state.summary()
    assert summary["elapsed_seconds"] == 30.0
    assert summary["phases"][0]["seconds"] == 29.0
