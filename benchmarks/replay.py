"""Replay speed: a long log read headless, opened in the dashboard, and attach to a live run.

    .venv/bin/python benchmarks/replay.py [--events 1000000] [--rounds 3] [--skip-attach]

1. A synthetic CUDA log of ``--events`` events (a header, the phases, ten 10 Hz device samples per
   training step, a snapshot per step, a few warnings and notes, an exit) is written to a temp dir.
2. ``ftwatch replay LOG --headless --json`` on it, against merely reading the same file line by line
   and parsing each line with the standard ``json`` module, msgspec (the parser the reader uses when
   it is installed) and orjson (where installed), all as fresh processes, interleaved; medians of
   ``--rounds``. The ratios are the figure: what the checks and the fold cost on top of parsing. The
   reader's own parser is the one named first in the table's title.
3. ``ftwatch replay LOG`` in the dashboard (a pseudo-terminal, 120x36): time from the spawn to the
   first frame (the run's name on the status line, while the log is still being read), to the final
   state (``FINISHED``), and how long a step back (``left``) takes to show on the big log.
4. Attach: ``ftwatch run --detach`` on the bundled tiny example with many steps, then the time from
   spawning ``ftwatch attach PID`` to its first frame showing the live run (badge and step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pty_terminal import PtyProcess, terminal_env

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ftwatch.runlog.events import encode  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20
CAPACITY = 81559 * MiB
SAMPLES_PER_STEP = 10
#: Parsing every line of the log and nothing else, with each parser (a fresh process each): the floor.
PARSE_ONLY = {
    "json": "import json, sys\nfor line in open(sys.argv[1], encoding='utf-8'):\n    json.loads(line)\n",
    "msgspec": "import msgspec, sys\nd = msgspec.json.Decoder().decode\n"
               "for line in open(sys.argv[1], encoding='utf-8'):\n    d(line)\n",
    "orjson": "import orjson, sys\nfor line in open(sys.argv[1], encoding='utf-8'):\n    orjson.loads(line)\n",
}


# -- the log ------------------------------------------------------------------------------------
def _sample(t: float, phase: str, allocated: int, hz: float) -> str:
    reserved = allocated + GiB
    process = reserved + 530 * MiB
    used = process + 1300 * MiB
    return encode("sample", {
        "phase": phase, "rss": 3 * GiB, "sys_used": 12 * GiB, "sys_total": 64 * GiB, "cpu_percent": 98.0,
        "cuda": {"allocated": allocated, "reserved": reserved, "max_allocated": allocated + 2 * GiB,
                 "alloc_retries": 0, "ooms": 0},
        "nvml": {"total": CAPACITY, "used": used, "free": CAPACITY - used, "process": process,
                 "others": [[4242, 1300 * MiB]], "util": 97}}, t)


def _snapshot(t: float, step: int | None, phase: str, activations: int) -> str:
    weights, lora = 15 * GiB, 42 * MiB
    tensors = {"weights": weights, "lora": lora, "grads": lora if step else 0, "optimizer": 2 * lora if step else 0,
               "activations": activations}
    allocated = sum(tensors.values()) + GiB
    cats = {**tensors, "other": GiB, "cache": GiB, "non_torch": 530 * MiB, "other_processes": 1300 * MiB,
            "free": CAPACITY - allocated - GiB - 530 * MiB - 1300 * MiB}
    fields = {"phase": phase, "step": step, "categories": cats, "allocated_peak": allocated,
              "reserved": allocated + GiB}
    if step:
        fields.update(loss=round(1.1 + 2.0 * math.exp(-step / 5000), 4), lr=1e-4, tokens=8192, seq_len=2048)
    return encode("snapshot", fields, t)


def write_log(path: Path, n_events: int) -> dict[str, int]:
    """Write a realistic log of exactly ``n_events`` events; returns the count of each kind."""
    hz, t = 10.0, 1_760_000_000.0
    steps = max((n_events - 40) // (SAMPLES_PER_STEP + 1), 1)
    counts: dict[str, int] = {}
    with path.open("w", encoding="utf-8") as out:

        def put(kind: str, line: str) -> None:
            counts[kind] = counts.get(kind, 0) + 1
            out.write(line)

        put("header", encode("header", {
            "run_id": "bench", "name": "bench-1m", "config_path": "/tmp/bench.toml", "pid": 1, "host": "bench",
            "user": "bench", "versions": {"ftwatch": "0.1.0"}, "model": "meta-llama/Llama-3.1-8B",
            "device": {"type": "cuda", "index": 0, "name": "NVIDIA H100 80GB HBM3", "capacity": CAPACITY,
                       "capacity_source": "nvml"},
            "budget": None, "sample_hz": hz, "max_steps": steps, "rank": 0, "world_size": 1}, t))
        put("note", encode("note", {"code": "bench", "message": "a synthetic log for benchmarks/replay.py"}, t))
        for phase, seconds in (("loading_model", 1.0), ("applying_lora", 0.5), ("preparing_trainer", 0.5)):
            put("phase", encode("phase", {"name": phase}, t))
            for i in range(int(seconds * hz)):
                t += 1 / hz
                put("sample", _sample(t, phase, int(15 * GiB * min((i + 1) / 10, 1)), hz))
            put("snapshot", _snapshot(t, None, phase, 0))
        put("phase", encode("phase", {"name": "training"}, t))
        for step in range(1, steps + 1):
            if sum(counts.values()) + SAMPLES_PER_STEP + 2 > n_events:
                break
            activations = int(30 * GiB * (1 + 0.05 * math.sin(step / 7)))
            for i in range(SAMPLES_PER_STEP):
                t += 1 / hz
                put("sample", _sample(t, "training", 15 * GiB + int(activations * math.sin(math.pi * i / 10)), hz))
            put("snapshot", _snapshot(t, step, "training", activations))
            if step % 20000 == 0:
                put("warning", encode("warning", {
                    "code": "oom_risk", "level": "watch", "category": "activations", "step": step,
                    "message": "peak near 85% of the card", "suggestions": []}, t))
        while sum(counts.values()) < n_events - 1:
            t += 1 / hz
            put("sample", _sample(t, "training", 15 * GiB, hz))
        put("exit", encode("exit", {"status": "finished", "step": step, "by": "worker", "suggestions": []}, t + 0.1))
    return counts


# -- timing processes -----------------------------------------------------------------------------
def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall seconds and CPU seconds (user + system) of a command run to its end, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout


# -- the measurements -----------------------------------------------------------------------------
def parsers() -> list[str]:
    """The parsers installed here, of those in :data:`PARSE_ONLY`."""
    found = []
    for name in PARSE_ONLY:
        try:
            __import__(name)
        except ImportError:
            continue
        found.append(name)
    return found


def headless(log: Path, rounds: int) -> dict[str, Any]:
    """``replay --headless --json`` against a line-by-line parse of the same file by each parser."""
    names = parsers()
    walls: dict[str, list[float]] = {name: [] for name in ["replay", *names]}
    cpus: dict[str, list[float]] = {name: [] for name in walls}
    summary: dict = {}
    for _ in range(rounds):
        for name in names:
            wall, cpu, _ = timed([sys.executable, "-c", PARSE_ONLY[name], str(log)])
            walls[name].append(wall)
            cpus[name].append(cpu)
        wall, cpu, out = timed([sys.executable, "-m", "ftwatch", "replay", str(log), "--headless", "--json"],
                               env=terminal_env())
        walls["replay"].append(wall)
        cpus["replay"].append(cpu)
        summary = json.loads(out)
    return {"wall": {k: statistics.median(v) for k, v in walls.items()},
            "cpu": {k: statistics.median(v) for k, v in cpus.items()}, "parsers": names,
            "events": summary["log"]["events"], "steps": summary["steps"]}


def reader_parser() -> str:
    """The parser ftwatch's reader uses here: msgspec when installed, else json."""
    from ftwatch.runlog import event_reader

    return "msgspec" if event_reader._fast_decode is not None else "json"


def dashboard(log: Path, steps: int) -> dict[str, float]:
    """First frame, final state and a step back of ``ftwatch replay LOG`` in a pseudo-terminal."""
    proc = PtyProcess([sys.executable, "-m", "ftwatch", "replay", str(log)], terminal_env(), cwd=REPO)
    try:
        first = proc.wait_for(rb"bench-1m", 60)
        final = proc.wait_for(rb"FINISHED", 600)
        time.sleep(0.5)
        backs = []
        for back in range(1, 4):
            mark, start = proc.mark(), time.perf_counter()
            proc.send(b"\x1b[D")  # left: one step back (from the end too)
            proc.wait_for(rf"step {steps - back}/".encode(), 30, start=mark)
            backs.append(time.perf_counter() - start)
        proc.send(b"q")
        time.sleep(0.3)
    finally:
        proc.close()
    return {"first": first, "final": final, "back": statistics.median(backs)}


def attach_first_frame(rounds: int) -> dict[str, float]:
    """``ftwatch run --detach`` on the tiny example, then spawn-to-first-frame of ``attach PID``."""
    with tempfile.TemporaryDirectory(prefix="ftwatch-bench-") as tmp:
        config = Path(tmp) / "tiny.toml"
        text = (REPO / "examples" / "tiny-lora.toml").read_text()
        text = text.replace('name = "tiny-llama"', f'name = "{REPO / "examples" / "tiny-llama"}"')
        text = text.replace('path = "data/field-notes.jsonl"', f'path = "{REPO / "examples" / "data" / "field-notes.jsonl"}"')
        text = re.sub(r"(?m)^max_steps = \d+", "max_steps = 100000", text)
        text = text.replace('log_dir = "ftwatch-runs"', f'log_dir = "{Path(tmp) / "runs"}"')
        config.write_text(text)
        env = dict(terminal_env(), FTWATCH_HOME=str(Path(tmp) / "home"))
        _, _, out = timed([sys.executable, "-m", "ftwatch", "run", str(config), "--detach"], env=env)
        pid = int(out.split("pid ")[1].split(",")[0])
        try:
            log = next((Path(tmp) / "runs").iterdir()) / "events.jsonl"
            deadline = time.time() + 300
            while not log.exists() or '"step":3,' not in log.read_text():
                if time.time() > deadline:
                    raise TimeoutError("the detached run did not reach step 3")
                time.sleep(0.2)
            times = []
            for _ in range(rounds):
                proc = PtyProcess([sys.executable, "-m", "ftwatch", "attach", str(pid)], env, cwd=REPO)
                try:
                    times.append(proc.wait_for(rb"(?s)LIVE.*?step \d+/100000", 60))
                    proc.send(b"d")  # detach: the training goes on
                    time.sleep(0.3)
                finally:
                    proc.close()
            events = sum(1 for _ in log.open())
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    return {"first": statistics.median(times), "min": min(times), "events": events}


def main() -> None:
    """Write the log, run the measurements, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-attach", action="store_true")
    args = parser.parse_args()
    print(f"ftwatch replay benchmark ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
    with tempfile.TemporaryDirectory(prefix="ftwatch-bench-") as tmp:
        log = Path(tmp) / "events.jsonl"
        start = time.perf_counter()
        counts = write_log(log, args.events)
        size = log.stat().st_size
        print(f"log: {sum(counts.values()):,} events ({', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()))}), "
              f"{size / 1e6:.0f} MB, written in {time.perf_counter() - start:.1f} s")
        print(f"\n  {'measure':<{NAME_WIDTH}}  {'value':>16}\n  {'-' * NAME_WIDTH}  {'-' * 16}")
        own = reader_parser()
        print(f"  (the reader parses with {own} here)")
        h = headless(log, args.rounds)
        assert h["events"] == sum(counts.values())
        wall, cpu = h["wall"], h["cpu"]
        row("replay --headless --json (median wall / CPU)", f"{wall['replay']:.2f} / {cpu['replay']:.2f} s")
        for name in h["parsers"]:
            mark = " (the reader's)" if name == own else ""
            row(f"parse only, {name}{mark} (wall / CPU)", f"{wall[name]:.2f} / {cpu[name]:.2f} s")
        for name in h["parsers"]:
            row(f"ratio: replay / parse only with {name} (wall, CPU)",
                f"{wall['replay'] / wall[name]:.2f}x, {cpu['replay'] / cpu[name]:.2f}x")
        row("replay throughput", f"{h['events'] / wall['replay'] / 1e3:.0f}k events/s")
        d = dashboard(log, h["steps"])
        row("dashboard: spawn to first frame (log still loading)", f"{d['first'] * 1000:.0f} ms")
        row("dashboard: spawn to the final state (FINISHED)", f"{d['final']:.2f} s")
        row("ratio: dashboard final state / headless replay (wall)", f"{d['final'] / wall['replay']:.2f}x")
        row("dashboard: step back at the end (key to screen)", f"{d['back'] * 1000:.0f} ms")
    if not args.skip_attach:
        a = attach_first_frame(args.rounds)
        row(f"attach PID, live run of {a['events']:,} events: spawn to frame", f"{a['first'] * 1000:.0f} ms")


NAME_WIDTH = 56


def row(name: str, value: str) -> None:
    """One line of the table, printed as soon as it is measured."""
    print(f"  {name:<{NAME_WIDTH}}  {value:>16}", flush=True)


if __name__ == "__main__":
    main()
