"""The wrapped mode of ``benchmarks/overhead.py``: a plain Trainer script run as is and under
``ftwatch run --headless --``, interleaved pairs.

The script is ``tests/fixtures/scripts/trainer_script.py`` (the bundled tiny model, LoRA r=8 on
q/v, a ``transformers.Trainer`` that knows nothing of ftwatch). Each run is a fresh process; the
figure is the Trainer's own ``train_runtime`` (the whole ``train()`` call, first step included),
read from what the script printed: its stdout for the plain run, ``<run dir>/worker.log`` for the
wrapped one. The command's wall time (process start to exit: imports, model load, and in the
wrapped run ftwatch's bootstrap, samplers and headless viewer) is reported beside it.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "fixtures" / "scripts" / "trainer_script.py"
RUNTIME = re.compile(r"""['"]train_runtime['"]\s*:\s*['"]?([0-9.eE+-]+)""")


@dataclass(frozen=True)
class WrappedRun:
    """One run of the script: its steps/s by ``train_runtime`` and the command's wall seconds."""

    steps_per_s: float
    wall_s: float


def train_runtime(text: str) -> float:
    """The last ``train_runtime`` the Trainer logged in ``text`` (its PrinterCallback's dict)."""
    found = RUNTIME.findall(text)
    if not found:
        raise RuntimeError("no train_runtime in the script's output:\n" + text[-2000:])
    return float(found[-1])


def run_script(wrapped: bool, steps: int, threads: int = 1) -> WrappedRun:
    """Run the Trainer script once, plain or under ``ftwatch run --headless --``, in a fresh temp dir."""
    tmp = Path(tempfile.mkdtemp(prefix="ftwatch-bench-wrapped-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), FTWATCH_LOG_DIR=str(tmp / "runs"))
    command = [sys.executable, str(SCRIPT), str(tmp / "out"), str(steps)]
    if wrapped:
        command = [sys.executable, "-m", "ftwatch", "run", "--headless", "--", *command]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp, env=env, timeout=900, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    if wrapped:
        logs = list((tmp / "runs").glob("*/worker.log"))
        if len(logs) != 1:
            raise RuntimeError(f"expected one run directory under {tmp / 'runs'}, found {logs}")
        text = logs[0].read_text(errors="replace")
    else:
        text = done.stdout
    return WrappedRun(steps / train_runtime(text), wall)


def wrapped_pairs(pairs: int, steps: int, threads: int = 1) -> list[tuple[WrappedRun, WrappedRun]]:
    """``pairs`` interleaved (plain, wrapped) runs, the order alternating; prints each pair."""
    run_script(False, 2, threads)  # warm the file cache before timing anything
    rows = []
    for pair in range(pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        result = {flag: run_script(flag, steps, threads) for flag in order}
        off, on = result[False], result[True]
        rows.append((off, on))
        print(f"wrapped pair {pair + 1}: plain {off.steps_per_s:6.1f} wrapped {on.steps_per_s:6.1f} steps/s "
              f"(wrapped/plain {on.steps_per_s / off.steps_per_s:.3f})   command wall plain {off.wall_s:5.1f} s "
              f"wrapped {on.wall_s:5.1f} s", flush=True)
    return rows


def wrapped_table_rows(rows: list[tuple[WrappedRun, WrappedRun]], steps: int) -> list[str]:
    """Markdown rows, in ``overhead.py``'s main table's columns, for the wrapped pairs."""
    ratio = statistics.median(on.steps_per_s / off.steps_per_s for off, on in rows)
    wall = statistics.median(on.wall_s / off.wall_s for off, on in rows)
    return [
        f"| wrapped: steps/s by train_runtime | {len(rows)} | {steps} | "
        f"{statistics.median(off.steps_per_s for off, _ in rows):.1f} | "
        f"{statistics.median(on.steps_per_s for _, on in rows):.1f} | {ratio:.3f} | {100 * (1 - ratio):.1f}% |",
        f"| wrapped: command wall seconds | {len(rows)} | {steps} | "
        f"{statistics.median(off.wall_s for off, _ in rows):.1f} s | "
        f"{statistics.median(on.wall_s for _, on in rows):.1f} s | {wall:.3f} | "
        f"{statistics.median(on.wall_s - off.wall_s for off, on in rows):+.1f} s |",
    ]
