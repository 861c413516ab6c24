"""The Prometheus exporter: the collector's values, the endpoint, the CLI options, a real run scraped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import FIXTURES_ROOT, REPO, run_cli
from ftwatch.runlog.event_reader import read_events
from ftwatch.runlog.events import TENSOR_CATEGORIES, encode
from ftwatch.runlog.state import RunState
from ftwatch.views.exporters.prometheus import MetricsServer, MetricsServerError
from ftwatch.views.exporters.prometheus_metrics import METRICS, RunStateCollector

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]

T0 = 1_760_000_000.0
GiB = 1 << 30


# -- helpers ----------------------------------------------------------------------------------------

def parse(text: str) -> Series:
    """Exposition text -> {(sample name, sorted labels): value}."""
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def render(state: RunState) -> str:
    collector = RunStateCollector()
    collector.publish(state)
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def value(series: Series, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels`` (None when absent)."""
    found = [v for (n, ls), v in series.items() if n == name and set(labels.items()) <= set(ls)]
    assert len(found) <= 1, f"{name} {labels}: {len(found)} samples"
    return found[0] if found else None


def by_label(series: Series, name: str, label: str) -> dict[str, float]:
    """``{label value: sample value}`` for every sample of ``name``."""
    return {dict(ls)[label]: v for (n, ls), v in series.items() if n == name}


def labels_of(series: Series, name: str) -> dict[str, str]:
    found = [dict(ls) for (n, ls) in series if n == name]
    assert len(found) == 1
    return found[0]


def fold(events: list[dict[str, Any]]) -> RunState:
    state = RunState()
    state.apply_all(events)
    return state


def ev(kind: str, t: float, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "t": t, "kind": kind, **fields}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str, timeout: float = 2.0) -> Series | None:
    """One scrape over loopback; None when nothing answers (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return parse(response.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def scrape_until(url: str, predicate: Any, deadline_s: float = 20.0) -> Series:
    """Scrape (a bounded number of times) until ``predicate(series)`` holds."""
    end = time.monotonic() + deadline_s
    last: Series | None = None
    while time.monotonic() < end:
        last = scrape(url)
        if last is not None and predicate(last):
            return last
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {deadline_s}s; last scrape: {last}")


# -- hand-made runs ---------------------------------------------------------------------------------

CAPACITY = 80 * GiB


def cuda_events() -> list[dict[str, Any]]:
    """A CUDA run on GPU 2 of rank 1, three training steps, a watch warning, no exit yet."""
    header = ev("header", T0, run_id="abc123", name="job", pid=77, host="node-1", model="org/model",
                versions={"ftwatch": "0.1.0"}, device={"type": "cuda", "index": 2, "name": "H100",
                                                       "capacity": CAPACITY, "capacity_source": "nvml"},
                budget=None, sample_hz=10, max_steps=10, rank=1, world_size=8)

    def sample(t: float, process: int, rss: int) -> dict[str, Any]:
        return ev("sample", t, phase="training", rss=rss, cuda={"allocated": process // 2, "reserved": process - 100},
                  nvml={"total": CAPACITY, "used": process + 3 * GiB, "free": CAPACITY - process - 3 * GiB,
                        "process": process, "others": [[1, 3 * GiB]]})

    def snap(t: float, step: int | None, acts: int, cache: int, loss: float | None) -> dict[str, Any]:
        cats = {"weights": 10 * GiB, "lora": 5_000_000, "grads": 5_000_000, "optimizer": 10_000_000,
                "activations": acts, "other": 700_000_000, "cache": cache, "non_torch": 500_000_000,
                "other_processes": 3 * GiB}
        cats["free"] = CAPACITY - sum(cats.values())
        return ev("snapshot", t, phase="training", step=step, loss=loss, categories=cats)

    return [
        header,
        ev("phase", T0 + 0.1, name="loading_model"),
        sample(T0 + 0.2, 6 * GiB, 900_000_000),
        snap(T0 + 1.0, None, 0, 100_000_000, None),
        ev("phase", T0 + 1.1, name="training", max_steps=10),
        snap(T0 + 2.0, 1, 4 * GiB, 300_000_000, 2.5),
        sample(T0 + 2.1, 16 * GiB, 1_200_000_000),
        snap(T0 + 2.5, 2, 6 * GiB, 200_000_000, 2.25),
        ev("warning", T0 + 2.5, code="oom_risk", level="watch", message="m", step=2, steps_to_oom=40),
        sample(T0 + 2.6, 18 * GiB, 1_100_000_000),
        snap(T0 + 3.5, 3, 5 * GiB, 250_000_000, 2.0),
        sample(T0 + 3.6, 17 * GiB, 1_000_000_000),
    ]


def test_collector_renders_every_figure_of_a_cuda_run() -> None:
    events = cuda_events()
    series = parse(render(fold(events)))
    base = {"run": "job", "rank": "1", "device": "cuda:2"}

    snapshots = [e for e in events if e["kind"] == "snapshot"]
    samples = [e for e in events if e["kind"] == "sample"]
    last = snapshots[-1]["categories"]
    assert by_label(series, "ftwatch_memory_bytes", "category") == {k: float(v) for k, v in last.items()}
    peaks = {k: float(max(s["categories"][k] for s in snapshots)) for k in last}
    assert by_label(series, "ftwatch_peak_bytes", "category") == peaks
    own = [sum(v for k, v in s["categories"].items() if k not in ("other_processes", "free")) for s in snapshots]
    assert value(series, "ftwatch_peak_total_bytes", **base) == max(own + [s["nvml"]["process"] for s in samples])
    assert value(series, "ftwatch_capacity_bytes", **base) == CAPACITY
    # headroom: what the last step left free (this process's step peak plus the other processes)
    assert value(series, "ftwatch_headroom_bytes", **base) == CAPACITY - (own[-1] + 3 * GiB) == last["free"]
    assert value(series, "ftwatch_process_bytes", **base) == samples[-1]["nvml"]["process"]
    assert value(series, "ftwatch_rss_bytes", **base) == samples[-1]["rss"]
    assert value(series, "ftwatch_peak_rss_bytes", **base) == max(s["rss"] for s in samples)
    assert value(series, "ftwatch_step", **base) == 3
    assert value(series, "ftwatch_max_steps", **base) == 10
    assert value(series, "ftwatch_loss", **base) == 2.0
    steps = [s for s in snapshots if s["step"] is not None]
    rate = (steps[-1]["step"] - steps[0]["step"]) / (steps[-1]["t"] - steps[0]["t"])
    assert value(series, "ftwatch_steps_per_second", **base) == pytest.approx(rate, rel=1e-12)
    assert value(series, "ftwatch_risk_level", **base) == 1
    assert value(series, "ftwatch_warnings_total", code="oom_risk", level="watch", **base) == 1
    assert by_label(series, "ftwatch_run_status", "status") == {
        "running": 1, "finished": 0, "failed": 0, "oom": 0, "stopped": 0}
    assert by_label(series, "ftwatch_phase", "phase") == {
        "loading_model": 0, "applying_lora": 0, "preparing_trainer": 0, "training": 1}
    assert value(series, "ftwatch_start_timestamp_seconds", **base) == T0
    assert value(series, "ftwatch_last_event_timestamp_seconds", **base) == events[-1]["t"]
    info = labels_of(series, "ftwatch_run_info")
    assert info == {**base, "run_id": "abc123", "model": "org/model", "host": "node-1", "pid": "77",
                    "device_name": "H100", "capacity_source": "nvml", "world_size": "8", "external": "false",
                    "ftwatch_version": "0.1.0"}
    assert value(series, "ftwatch_run_info", **base) == 1
    # every series carries run, rank and device
    assert all({"run", "rank", "device"} <= {k for k, _ in labels} for _, labels in series)


def test_the_end_of_a_run_shows_its_status_and_clears_the_risk() -> None:
    events = cuda_events()
    events.append(ev("warning", T0 + 3.7, code="oom_risk", level="danger", message="m", step=3))
    running = parse(render(fold(events)))
    assert value(running, "ftwatch_risk_level") == 2
    assert by_label(running, "ftwatch_warnings_total", "level") == {"watch": 1, "danger": 1}
    events.append(ev("exit", T0 + 4.0, status="oom", step=3, message="CUDA out of memory"))
    ended = parse(render(fold(events)))
    assert by_label(ended, "ftwatch_run_status", "status") == {
        "running": 0, "finished": 0, "failed": 0, "oom": 1, "stopped": 0}
    assert value(ended, "ftwatch_risk_level") == 0
    assert value(ended, "ftwatch_last_event_timestamp_seconds") == T0 + 4.0


def test_cpu_run_headroom_is_the_budget_less_the_tensors() -> None:
    budget = 2 * GiB
    cats = {"weights": 600_000, "lora": 16_384, "grads": 16_384, "optimizer": 32_800, "activations": 2_500_000}
    events = [
        ev("header", T0, run_id="r", name="tiny", device={"type": "cpu", "index": None, "name": "x86_64",
                                                           "capacity": budget, "capacity_source": "budget"},
           rank=0, world_size=1),
        ev("sample", T0 + 0.1, phase=None, rss=400_000_000, sys_used=1, sys_total=8 * GiB),
        ev("snapshot", T0 + 0.5, phase="training", step=1, loss=6.5, categories=cats),
    ]
    series = parse(render(fold(events)))
    base = {"run": "tiny", "rank": "0", "device": "cpu"}
    assert value(series, "ftwatch_headroom_bytes", **base) == budget - sum(cats[c] for c in TENSOR_CATEGORIES)
    assert value(series, "ftwatch_process_bytes", **base) == 400_000_000  # the RSS on a CPU run
    assert value(series, "ftwatch_peak_total_bytes", **base) == sum(cats.values())
    assert by_label(series, "ftwatch_memory_bytes", "category") == {k: float(v) for k, v in cats.items()}
    assert value(series, "ftwatch_steps_per_second") is None  # one step: no speed yet, and not shown as 0
    assert value(series, "ftwatch_max_steps") is None
    assert value(series, "ftwatch_risk_level") == 0


def test_nothing_is_served_before_the_header_and_unknowns_are_left_out() -> None:
    assert render(RunState()) == ""
    series = parse(render(fold([ev("header", T0, name="waiting", device={"type": "cuda", "index": 0})])))
    names = {name for name, _ in series}
    assert "ftwatch_run_info" in names and "ftwatch_step" in names
    for absent in ("ftwatch_memory_bytes", "ftwatch_loss", "ftwatch_capacity_bytes", "ftwatch_headroom_bytes",
                   "ftwatch_process_bytes", "ftwatch_peak_total_bytes", "ftwatch_warnings_total"):
        assert absent not in names


def test_every_metric_is_served_described_and_documented() -> None:
    events = cuda_events() + [ev("exit", T0 + 4.0, status="finished", step=3)]
    served = {family.name for family in text_string_to_metric_families(render(fold(events)))}
    served = {name + "_total" if name == "ftwatch_warnings" else name for name in served}
    assert served == {m.name for m in METRICS}
    described = RunStateCollector().describe()
    assert [f.name for f in described] == [m.name.removesuffix("_info").removesuffix("_total") for m in METRICS]
    docs = (REPO / "docs" / "prometheus.md").read_text()
    assert [m.name for m in METRICS if f"`{m.name}`" not in docs] == []


def test_a_name_filter_finds_the_collector(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    write(log, cuda_events())
    with MetricsServer(log, poll_seconds=0.02) as server:
        url = server.url + "?name[]=ftwatch_step&name[]=ftwatch_loss"
        series = scrape_until(url, lambda s: bool(s))
    assert {name for name, _ in series} == {"ftwatch_step", "ftwatch_loss"}


def test_each_scrape_renders_one_consistent_state() -> None:
    """A state folded in one thread while another renders: every scrape shows one step's figures."""
    collector = RunStateCollector()
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    state = RunState()
    state.apply(ev("header", T0, name="race", device={"type": "cpu", "capacity": 10 * GiB}))
    done = threading.Event()

    def fold_steps() -> None:
        for step in range(1, 3001):
            state.apply(ev("snapshot", T0 + step, phase="training", step=step, loss=float(step),
                           categories={c: step * 1000 + i for i, c in enumerate(TENSOR_CATEGORIES)}))
            collector.publish(state)
        done.set()

    thread = threading.Thread(target=fold_steps)
    thread.start()
    checked = 0
    while not done.is_set() or checked == 0:
        series = parse(generate_latest(registry).decode())
        step = value(series, "ftwatch_step")
        if step:
            memory = by_label(series, "ftwatch_memory_bytes", "category")
            assert memory == {c: step * 1000 + i for i, c in enumerate(TENSOR_CATEGORIES)}
            assert value(series, "ftwatch_loss") == step
            assert value(series, "ftwatch_last_event_timestamp_seconds") == T0 + step
            checked += 1
    thread.join()
    assert checked > 0


# -- the endpoint -----------------------------------------------------------------------------------

def write(path: Path, events: list[dict[str, Any]]) -> None:
    with path.open("a") as handle:
        for e in events:
            handle.write(encode(e["kind"], {k: v for k, v in e.items() if k not in ("v", "t", "kind")}, t=e["t"]))


def test_server_follows_a_growing_log_over_loopback(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"  # not there yet: the follower waits for it
    events = cuda_events()
    server = MetricsServer(log, "127.0.0.1", 0, poll_seconds=0.02).start()
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert scrape(server.url) == {}  # up, nothing to say before the header
        write(log, events[:6])  # up to step 1
        series = scrape_until(server.url, lambda s: value(s, "ftwatch_step") == 1)
        assert value(series, "ftwatch_memory_bytes", category="activations") == 4 * GiB
        write(log, events[6:])
        series = scrape_until(server.url, lambda s: value(s, "ftwatch_step") == 3)
        assert value(series, "ftwatch_memory_bytes", category="activations") == 5 * GiB
        assert value(series, "ftwatch_risk_level") == 1
        write(log, [ev("exit", T0 + 5, status="finished", step=3)])
        scrape_until(server.url, lambda s: value(s, "ftwatch_run_status", status="finished") == 1)
    finally:
        server.stop()
    assert scrape(server.url, timeout=0.5) is None  # closed


def test_a_port_in_use_is_one_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsServerError, match=rf"^cannot serve metrics on 127\.0\.0\.1:{port}: the port "
                                                     r"is already in use$"):
            MetricsServer(None, "127.0.0.1", port).start()


@pytest.fixture
def busy_port() -> Any:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_run_with_a_busy_port_exits_2_before_training(tiny_config: Any, busy_port: int, tmp_path: Path) -> None:
    config = tiny_config()
    result = run_cli("run", str(config), "--headless", "--metrics-port", str(busy_port), timeout=120)
    assert result.returncode == 2
    assert result.stderr == (f"ftwatch run: cannot serve metrics on 127.0.0.1:{busy_port}: the port is already "
                             "in use (choose another --metrics-port, or 0 for a free one)\n")
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing started


def test_attach_with_a_busy_port_exits_2(busy_port: int) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        result = run_cli("attach", str(sleeper.pid), "--headless", "--metrics-port", str(busy_port), timeout=120)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.returncode == 2
    assert result.stderr.startswith(f"ftwatch attach: cannot serve metrics on 127.0.0.1:{busy_port}: the port is "
                                    "already in use")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--metrics-addr", "0.0.0.0"], "--metrics-addr and --metrics-linger need --metrics-port"),
    (["--metrics-linger", "5"], "--metrics-addr and --metrics-linger need --metrics-port"),
    (["--detach", "--metrics-port", "0"], "--metrics-port needs a viewer"),
    (["--metrics-port", "70000"], "a port is 0 to 65535, got 70000"),
    (["--metrics-port", "0", "--metrics-addr", "nosuchhost.invalid"], "unknown address 'nosuchhost.invalid'"),
])
def test_metrics_option_mistakes_exit_2(tiny_config: Any, tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("run", str(tiny_config()), "--headless", *args, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_exporter_and_the_probe_stay_apart() -> None:
    """The exporter (and the commands that start it) never import torch or textual; the probe
    module never imports the exporter (the callback loads it only when a port is asked for)."""
    viewer = ("import sys, ftwatch.views.exporters.prometheus, ftwatch.commands.run, ftwatch.commands.attach; "
              "print(sorted(m for m in ('torch', 'textual', 'transformers') if m in sys.modules))")
    probe = ("import sys, ftwatch.training.probe.probe, ftwatch.training.probe.callback; "
             "print(sorted(m for m in ('prometheus_client', 'ftwatch.views.exporters.prometheus') if m in sys.modules))")
    for code in (viewer, probe):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
        assert result.stdout.strip() == "[]", result.stderr


# -- the callback -----------------------------------------------------------------------------------

def test_callback_serves_the_training_process_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ftwatch.training.probe.callback import FtwatchCallback

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the script probe chains its own hook
    port = free_port()
    callback = FtwatchCallback(name="own-script", log_dir=tmp_path, metrics_port=port, sample_hz=20)
    callback.on_init_end(None, None, None)  # what the Trainer calls when it is built
    try:
        server = callback.metrics_server
        assert server is not None and server.url == f"http://127.0.0.1:{port}/metrics"
        series = scrape_until(server.url, lambda s: value(s, "ftwatch_phase", phase="preparing_trainer") == 1)
        assert labels_of(series, "ftwatch_run_info")["run"] == "own-script"
        scrape_until(server.url, lambda s: (value(s, "ftwatch_rss_bytes") or 0) > 0)
        callback.probe.finish("finished", step=0)
        scrape_until(server.url, lambda s: value(s, "ftwatch_run_status", status="finished") == 1)
        notes = [e for e in read_events(callback.probe.run_dir) if e["kind"] == "note" and e["code"] == "metrics"]
        assert notes and server.url in notes[0]["message"]
    finally:
        if callback.metrics_server is not None:
            callback.metrics_server.stop()
        if callback.probe is not None:
            callback.probe.finish("finished")


def test_callback_with_a_busy_port_warns_and_trains_on(tmp_path: Path, busy_port: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from ftwatch.training.probe.callback import FtwatchCallback

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    callback = FtwatchCallback(name="busy", log_dir=tmp_path, metrics_port=busy_port)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback.on_init_end(None, None, None)
    try:
        assert callback.metrics_server is None and callback.probe is not None
        assert any("already in use" in str(w.message) for w in caught)
    finally:
        callback.probe.finish("finished")
    notes = [e for e in read_events(callback.probe.run_dir) if e["kind"] == "note"]
    assert any(n["code"] == "no_metrics" and "already in use" in n["message"] for n in notes)


# -- a real run, scraped ----------------------------------------------------------------------------

@pytest.mark.slow
def test_scraped_figures_match_the_runs_summary_and_log(tiny_config: Any, tmp_path: Path) -> None:
    max_steps = 40
    config = tiny_config(training={"max_steps": max_steps})
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    stdout_path, stderr_path = tmp_path / "stdout.json", tmp_path / "stderr.txt"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with stdout_path.open("w") as out, stderr_path.open("w") as err:
        process = subprocess.Popen([sys.executable, "-m", "ftwatch", "run", str(config), "--headless", "--json",
                                    "--metrics-port", str(port), "--metrics-linger", "3"],
                                   stdout=out, stderr=err, cwd=REPO, env=env)
        scrapes: list[Series] = []
        deadline = time.monotonic() + 300
        try:
            while process.poll() is None and time.monotonic() < deadline:
                series = scrape(url, timeout=2)
                if series:
                    scrapes.append(series)
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
    assert process.returncode == 0, stderr_path.read_text()[-2000:]
    assert f"serving Prometheus metrics on {url}" in stderr_path.read_text()
    summary = json.loads(stdout_path.read_text())
    (run_dir,) = (tmp_path / "runs").iterdir()
    events = list(read_events(run_dir / "events.jsonl"))
    snapshots = [e for e in events if e["kind"] == "snapshot"]
    by_step = {e["step"]: e for e in snapshots if e["step"] is not None}
    base = {"run": config.stem, "rank": "0", "device": "cpu"}

    # while training: each scrape shows the breakdown the log holds for the step it shows
    mid = [s for s in scrapes if value(s, "ftwatch_run_status", status="running") == 1
           and 0 < (value(s, "ftwatch_step") or 0) < max_steps]
    assert mid, "no scrape landed while the run was training"
    for series in mid:
        step = int(value(series, "ftwatch_step", **base) or 0)
        expected = {k: float(v) for k, v in by_step[step]["categories"].items()}
        assert by_label(series, "ftwatch_memory_bytes", "category") == expected
        assert value(series, "ftwatch_loss", **base) == by_step[step]["loss"]
    steps_seen = [int(value(s, "ftwatch_step") or 0) for s in scrapes]
    assert steps_seen == sorted(steps_seen)  # never goes back

    # the last scrape (the endpoint lingers after the end): the summary's figures, exactly
    final = scrapes[-1]
    assert summary["status"] == "finished"
    assert value(final, "ftwatch_run_status", status="finished", **base) == 1
    assert value(final, "ftwatch_step", **base) == summary["steps"] == max_steps
    assert value(final, "ftwatch_loss", **base) == summary["loss"]
    assert value(final, "ftwatch_capacity_bytes", **base) == summary["capacity_bytes"]
    peaks = {k: v for k, v in summary["peak_bytes"].items() if k != "total"}
    assert by_label(final, "ftwatch_peak_bytes", "category") == {k: float(v) for k, v in peaks.items()}
    assert value(final, "ftwatch_peak_total_bytes", **base) == summary["peak_bytes"]["total"]
    assert value(final, "ftwatch_peak_rss_bytes", **base) == summary["peak_rss_bytes"]
    last_categories = snapshots[-1]["categories"]
    assert by_label(final, "ftwatch_memory_bytes", "category") == {k: float(v) for k, v in last_categories.items()}
    assert value(final, "ftwatch_headroom_bytes", **base) == summary["capacity_bytes"] - sum(
        last_categories[c] for c in TENSOR_CATEGORIES)
    step_times = [(e["t"], e["step"]) for e in snapshots if e["step"] is not None][-20:]
    (t0, s0), (t1, s1) = step_times[0], step_times[-1]
    assert value(final, "ftwatch_steps_per_second", **base) == pytest.approx((s1 - s0) / (t1 - t0), rel=1e-12)
    assert value(final, "ftwatch_last_event_timestamp_seconds", **base) == events[-1]["t"]
    assert value(final, "ftwatch_start_timestamp_seconds", **base) == events[0]["t"]
    assert labels_of(final, "ftwatch_run_info")["run_id"] == next(e for e in events if e["kind"] == "header")["run_id"]
    assert value(final, "ftwatch_risk_level", **base) == 0
    assert len(summary["warnings"]) == sum(v for (n, _), v in final.items() if n == "ftwatch_warnings_total")


def test_server_follows_every_rank_of_a_multi_process_run(tmp_path: Path) -> None:
    """One endpoint for a torchrun job (what `ftwatch run`'s dashboard path serves): a series per rank."""
    source = FIXTURES_ROOT / "logs" / "ddp-finished"
    run_dir = tmp_path / "job"
    (run_dir / "rank0").mkdir(parents=True)
    (run_dir / "launch.json").write_text((source / "launch.json").read_text())
    rank0 = (source / "rank0" / "events.jsonl").read_text()
    (run_dir / "rank0" / "events.jsonl").write_text(rank0)
    server = MetricsServer(run_dir, "127.0.0.1", 0, poll_seconds=0.02).start()
    try:
        series = scrape_until(server.url, lambda s: value(s, "ftwatch_step", rank="0") == 60)
        assert value(series, "ftwatch_step", rank="1") is None  # rank 1 has not written yet
        (run_dir / "rank1").mkdir()
        (run_dir / "rank1" / "events.jsonl").write_text((source / "rank1" / "events.jsonl").read_text())
        series = scrape_until(server.url, lambda s: value(s, "ftwatch_step", rank="1") == 60)
    finally:
        server.stop()
    for rank in ("0", "1"):
        last = [json.loads(line) for line in (source / f"rank{rank}" / "events.jsonl").read_text().splitlines()
                if '"kind":"snapshot"' in line][-1]
        assert value(series, "ftwatch_loss", rank=rank) == last["loss"]
        assert value(series, "ftwatch_run_status", status="finished", rank=rank) == 1
