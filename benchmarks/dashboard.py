"""Dashboard speed: first frame, cost of following a 10 samples/s run, and rendering a long history.

    .venv/bin/python benchmarks/dashboard.py [--follow-seconds 20] [--samples 100000]  (--samples 0: no 3.)

1. Time to first frame: the dashboard started as a process in a real pseudo-terminal (120x36),
   timed from the spawn until the status line of a recorded run is on the terminal.
2. Following a live run: a separate writer process appends events at 10 samples/s (plus a step
   snapshot every 0.5 s) for ``--follow-seconds`` of training; the dashboard's CPU share and RSS are read with
   psutil (also split: the main thread, where Textual draws, and the others: the feed's, Textual's
   input and output threads), and the bytes it writes to the terminal are counted (what a repaint
   costs over SSH); then the time from appending an event to seeing it on the terminal.
3. A run with ``--samples`` samples of history: time to read and fold it, and the time of one full
   redraw (state copy, every widget re-rendered, the timeline chart rebuilt, the whole screen
   composed and encoded as terminal output).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from pty_terminal import COLS, ROWS, PtyProcess, terminal_env

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ftwatch.views.dashboard.demo import iter_lines, synthetic_lines  # noqa: E402

DASHBOARD = (
    "import sys; from pathlib import Path; from ftwatch.views.dashboard.app import run_dashboard; "
    "from ftwatch.runlog.sources import WorkerHandle; "
    "pid = int(sys.argv[2]); handle = WorkerHandle(pid, Path(sys.argv[1]).parent) if pid else None; "
    "print(run_dashboard(Path(sys.argv[1]), handle), file=sys.stderr)"
)


def start_dashboard(log: Path, pid: int = 0) -> PtyProcess:
    """``run_dashboard`` on ``log`` in a pseudo-terminal; ``pid`` is the worker it watches (0: a replay)."""
    return PtyProcess([sys.executable, "-c", DASHBOARD, str(log), str(pid)], terminal_env())


def first_frame(log: Path, needle: bytes) -> float:
    """Seconds from spawning the dashboard until ``needle`` is on the terminal."""
    start = time.perf_counter()
    proc = start_dashboard(log)
    try:
        while not proc.seen(needle):
            if time.perf_counter() - start > 60:
                raise RuntimeError("no first frame after 60 s")
            time.sleep(0.005)
        return time.perf_counter() - start
    finally:
        proc.send(b"q")
        time.sleep(0.3)
        proc.close()


WRITER = """
import sys, time
sys.path.insert(0, sys.argv[3])
from ftwatch.views.dashboard.demo import iter_lines
seconds = float(sys.argv[2])
steps = int(seconds * 2) + 40
with open(sys.argv[1], "a", buffering=1) as f:
    start = None
    for t, line in iter_lines("cuda", steps=steps, ending="running", hz=10.0, step_seconds=0.5):
        if start is None:
            if '"kind":"phase","name":"training"' not in line:
                f.write(line)  # loading and setup: already history when the viewer starts
                continue
            start, first = time.time(), t
        delay = (t - first) - (time.time() - start)
        if delay > 0:
            time.sleep(delay)
        if time.time() - start > seconds:
            break
        f.write(line)
"""


def follow(seconds: float) -> dict[str, float]:
    """Follow a training run written at 10 samples/s and a snapshot every 0.5 s (its loading is history
    already); measure the dashboard's CPU, RSS and terminal output in the steady state."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "events.jsonl"
        log.touch()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(seconds), str(REPO / "src")])
        proc = start_dashboard(log, pid=writer.pid)
        try:
            while not proc.seen(b"LIVE"):
                time.sleep(0.01)
            time.sleep(1.0)  # settle
            ps = psutil.Process(proc.pid)
            main0 = _main_thread_cpu(ps)
            cpu0 = sum(ps.cpu_times()[:2])
            wall0 = time.perf_counter()
            with proc.lock:
                out0 = len(proc.output)
            rss_peak = 0
            window = max(seconds - 2.0, 1.0)
            while time.perf_counter() - wall0 < window:
                rss_peak = max(rss_peak, ps.memory_info().rss)
                time.sleep(0.25)
            cpu1 = sum(ps.cpu_times()[:2])
            main1 = _main_thread_cpu(ps)
            wall = time.perf_counter() - wall0
            with proc.lock:
                out_bytes = len(proc.output) - out0
            lines = sum(1 for _ in log.open())
            writer.kill()
            writer.wait()
            latencies = sample_to_screen(log, proc)
        finally:
            writer.kill()
            writer.wait()
            proc.close()
    return {"cpu_share": (cpu1 - cpu0) / wall, "main_share": (main1 - main0) / wall, "rss": rss_peak, "out_bytes_per_s": out_bytes / wall,
            "events": lines, "window": wall, "latency_median": sorted(latencies)[len(latencies) // 2],
            "latency_max": max(latencies)}


def _main_thread_cpu(ps: psutil.Process) -> float:
    """CPU seconds of the process's main thread (its thread id is the process id)."""
    return next((t.user_time + t.system_time for t in ps.threads() if t.id == ps.pid), 0.0)


def sample_to_screen(log: Path, proc: PtyProcess, rounds: int = 12) -> list[float]:
    """Append a step snapshot at a random moment; time until its step number is on the terminal."""
    import json
    import random

    last = json.loads(log.read_text().splitlines()[-1])
    out = []
    for i in range(rounds):
        time.sleep(random.uniform(0.2, 0.6))
        step = 90_001 + i
        line = json.dumps({"v": 1, "t": last["t"] + i, "kind": "snapshot", "phase": "training", "step": step,
                           "categories": {}})
        start = time.perf_counter()
        with log.open("a") as f:
            f.write(line + "\n")
        needle = f"step {step}".encode()
        while not proc.seen(needle):
            if time.perf_counter() - start > 5:
                break
            time.sleep(0.002)
        out.append(time.perf_counter() - start)
    return out


def long_history(samples: int) -> dict[str, float]:
    """Fold a run with ``samples`` samples of history and time one full frame."""
    from rich.console import Console

    from ftwatch.views.dashboard.app import FtwatchApp
    from ftwatch.views.dashboard.feed import RunFeed

    steps = samples // 5  # 10 Hz, 0.5 s a step: five samples a step
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "events.jsonl"
        with log.open("w") as f:
            for _, line in iter_lines("cuda", steps=steps, hz=10.0, step_seconds=0.5):
                f.write(line)
        size_mb = log.stat().st_size / 1e6
        feed = RunFeed(log)
        t0 = time.perf_counter()
        while feed.pump():
            pass
        feed.pump()
        fold = time.perf_counter() - t0
        n_samples = feed.state.samples

        result: dict[str, float] = {}

        async def frame() -> None:
            app = FtwatchApp(log, None, feed=feed)
            app.feed.start = lambda: None  # type: ignore[method-assign]  # already read
            async with app.run_test(size=(COLS, ROWS)) as pilot:
                await pilot.pause(0.3)
                times = []
                for _ in range(10):
                    start = time.perf_counter()
                    view = feed.view()
                    app._plot_width = -1  # force the chart too
                    app.render_view(view)
                    console = Console(width=COLS, height=ROWS, file=io.StringIO(), force_terminal=True,
                                      legacy_windows=False)
                    for widget in app.screen.walk_children():
                        widget.refresh()
                    console.print(app.screen._compositor.render_update(full=True))
                    times.append(time.perf_counter() - start)
                result["frame_median"] = sorted(times)[len(times) // 2]
                result["frame_max"] = max(times)
                result["points"] = len(view.timeline)

        asyncio.run(frame())
    return {"fold": fold, "samples": n_samples, "log_mb": size_mb, **result}


def main() -> None:
    """Run the three measurements and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--follow-seconds", type=float, default=20.0)
    parser.add_argument("--samples", type=int, default=100_000)
    args = parser.parse_args()
    print(f"ftwatch dashboard benchmark ({COLS}x{ROWS} pseudo-terminal, {os.cpu_count()} CPUs)")

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "events.jsonl"
        log.write_text("".join(synthetic_lines("cuda")))
        times = [first_frame(log, b"FINISHED") for _ in range(3)]
        print(f"time to first frame (recorded run, spawn to status line): "
              f"median {sorted(times)[1] * 1000:.0f} ms  (runs: {', '.join(f'{t * 1000:.0f}' for t in times)})")

    f = follow(args.follow_seconds)
    print(f"following a 10 samples/s run for {f['window']:.0f} s ({f['events']} events written): "
          f"CPU {f['cpu_share'] * 100:.1f}% of one core (main thread {f['main_share'] * 100:.1f}%), RSS {f['rss'] / 2**20:.0f} MiB, "
          f"terminal output {f['out_bytes_per_s'] / 1024:.1f} KiB/s; event-to-screen latency "
          f"median {f['latency_median'] * 1000:.0f} ms, max {f['latency_max'] * 1000:.0f} ms")

    if args.samples <= 0:
        return
    h = long_history(args.samples)
    print(f"history of {h['samples']:,} samples ({h['log_mb']:.0f} MB log): read and folded in "
          f"{h['fold']:.2f} s; one full redraw ({h['points']:.0f} timeline points): "
          f"median {h['frame_median'] * 1000:.1f} ms, max {h['frame_max'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
