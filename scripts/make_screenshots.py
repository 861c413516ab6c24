"""Make the dashboard screenshots in screenshots/ (SVG, and PNG when rsvg-convert is installed).

    .venv/bin/python scripts/make_screenshots.py                 # records a fresh run of the example
    .venv/bin/python scripts/make_screenshots.py --from-run tests/fixtures/logs/cpu-finished

By default the bundled example is written out by ``ftwatch example`` into a temporary directory
and trained once there with ``ftwatch run --headless``; its recorded run log is then shown at
three moments (while the model loads, in the middle of training, at the end) at 120x36, and the
end with its module view open (``m``). The
moments before the end are the same log cut at that event, shown as a live run. The synthetic
CUDA runs (``ftwatch.views.dashboard.demo``: an 8B fine-tune with all ten categories, and a 70B model that
runs out of memory while loading) are drawn too, named ``synthetic-*``, since a CPU run only has
the tensor categories. Two multi-process (torchrun) runs close the set: the recorded two-rank run
whose rank 1 was killed (``tests/fixtures/logs/ddp-rank-died``, named ``ddp-*``) and a synthetic
four-GPU run, live, one of whose ranks vanished (``synthetic-cuda-ddp``).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ftwatch.runlog.events import encode  # noqa: E402
from ftwatch.runlog.ranks import is_multi_rank_dir  # noqa: E402
from ftwatch.views.dashboard.app import FtwatchApp  # noqa: E402
from ftwatch.views.dashboard.demo import synthetic_lines  # noqa: E402

SIZE = (120, 36)


class StillRunning:
    """A stand-in worker handle for a log cut mid-run: the dashboard shows it as live."""

    def __init__(self, run_dir: Path) -> None:
        self.pid = 0
        self.run_dir = run_dir

    def is_alive(self) -> bool:
        """Always running."""
        return True

    def returncode(self) -> None:
        """No exit code while running."""
        return None

    def request_stop(self) -> None:
        """Nothing to stop."""

    def terminate(self) -> None:
        """Nothing to end."""

    def reattach_hint(self) -> str:
        """No hint for a picture."""
        return ""


def record_example(tmp: Path) -> Path:
    """Train the bundled example once (headless), as a user would after ``ftwatch example``, and
    return its run directory (so the worker log shows the user's paths, not this checkout's)."""
    subprocess.run([sys.executable, "-m", "ftwatch", "example", "ftwatch-example"], check=True, cwd=tmp,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "ftwatch", "run", "ftwatch-example/tiny-lora.toml", "--headless"],
                   check=True, cwd=tmp, stdout=subprocess.DEVNULL)
    return next((tmp / "ftwatch-runs").iterdir())  # log_dir is relative to the current directory


def cut_lines(lines: list[str], marker: str, extra: int) -> list[str]:
    """The log up to the first line containing ``marker`` plus ``extra`` more lines."""
    index = next(i for i, line in enumerate(lines) if marker in line)
    return lines[: index + 1 + extra]


def worker_log_until(log: str, loss_lines: int | None) -> str:
    """The worker's output as it stood: up to the training start plus ``loss_lines`` logged losses."""
    out = []
    seen = 0
    for line in re.split(r"(?<=\n)", log):  # lines end at newlines only (progress bars use \r)
        if loss_lines is None and ("training examples" in line or "'loss'" in line):
            break
        if "'loss'" in line:
            if loss_lines is not None and seen >= loss_lines:
                break
            seen += 1
        out.append(line)
    return "".join(out)


async def shoot(run_dir: Path, out: Path, title: str, live: bool, wait_step: int | None = None,
                keys: tuple[str, ...] = ()) -> None:
    """Draw the run in ``run_dir`` (a single run's, or a multi-process run's), press ``keys``, and
    save an SVG."""
    target = run_dir if is_multi_rank_dir(run_dir) else run_dir / "events.jsonl"
    app = FtwatchApp(target, StillRunning(run_dir) if live else None)  # type: ignore[arg-type]
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(200):
            await pilot.pause(0.05)
            view = app.view
            if view is None:
                continue
            if (live and view.samples and (wait_step is None or view.step >= wait_step)) or view.run_ended:
                break
        await pilot.pause(0.5)
        for key in keys:
            await pilot.press(key)
            await pilot.pause(0.5)
        out.write_text(app.export_screenshot(title=title))
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")


_TEXT = re.compile(r'(<text [^>]*?x=")([0-9.]+)("[^>]*?textLength=")([0-9.]+)("[^>]*>)((?:&#160;)+)([^<]*)</text>')


def svg_for_rsvg(svg: str) -> str:
    """rsvg drops the leading spaces of a text run; move the run right instead (PNG only)."""
    def fix(m: re.Match[str]) -> str:
        spaces = m.group(6).count("&#160;")
        chars = spaces + len(html.unescape(m.group(7)))
        width = float(m.group(4)) / chars if chars else 0.0
        x = float(m.group(2)) + spaces * width
        length = float(m.group(4)) - spaces * width
        if not m.group(7):
            return ""
        return f"{m.group(1)}{x:.1f}{m.group(3)}{length:.1f}{m.group(5)}{m.group(7)}</text>"
    return _TEXT.sub(fix, svg)


def to_png(svg: Path) -> None:
    """Convert with rsvg-convert when it is installed."""
    tool = shutil.which("rsvg-convert")
    if tool is None:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".svg", delete=False) as tmp:
        tmp.write(svg_for_rsvg(svg.read_text()))
    subprocess.run([tool, "-w", "1600", tmp.name, "-o", str(svg.with_suffix(".png"))], check=True)
    Path(tmp.name).unlink()


def stage(tmp: Path, name: str, lines: list[str], log: str) -> Path:
    """A run directory holding ``lines`` as its log and ``log`` as the worker's output."""
    run = tmp / name
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text("".join(lines))
    (run / "worker.log").write_text(log)
    return run


async def make_all(source: Path, out_dir: Path, tmp: Path) -> list[Path]:
    """Every screenshot: the recorded run at three moments, then the synthetic CUDA runs."""
    lines = (source / "events.jsonl").read_text().splitlines(keepends=True)
    log = (source / "worker.log").read_text() if (source / "worker.log").exists() else ""
    name = json.loads(lines[0]).get("name", "run")
    made: list[Path] = []
    steps = [line for line in lines if '"kind":"snapshot","phase":"training"' in line]
    middle = steps[len(steps) // 2]
    middle_step = int(re.search(r'"step":(\d+)', middle).group(1))  # type: ignore[union-attr]
    shots = [
        ("tiny-lora-loading", cut_lines(lines, '"kind":"phase","name":"loading_model"', 2),
         worker_log_until(log, None), True, None),
        ("tiny-lora-training", lines[: lines.index(middle) + 3], worker_log_until(log, middle_step // 10), True,
         middle_step),
        ("tiny-lora-end", lines, log, False, None),
    ]
    for shot, shot_lines, shot_log, live, wait in shots:
        run = stage(tmp, shot, shot_lines, shot_log)
        out = out_dir / f"{shot}.svg"
        await shoot(run, out, f"ftwatch: {name}", live, wait)
        made.append(out)
    out = out_dir / "tiny-lora-modules.svg"  # the module view (m) of the ended run
    await shoot(tmp / "tiny-lora-end", out, f"ftwatch: {name}", False, None, keys=("m",))
    made.append(out)

    cuda = synthetic_lines("cuda")
    cuda_log = (REPO / "tests" / "fixtures" / "logs" / "cuda-finished" / "worker.log").read_text()
    training = [i for i, line in enumerate(cuda) if '"kind":"snapshot","phase":"training","step":40,' in line][0]
    synthetic = [
        ("synthetic-cuda-loading", cut_lines(cuda, '"kind":"phase","name":"loading_model"', 50),
         cuda_log.splitlines(keepends=True)[0][:40] + "\r", True, None),
        ("synthetic-cuda-training", cuda[: training + 2], "".join(cuda_log.splitlines(keepends=True)[:6]), True, 40),
        ("synthetic-cuda-end", cuda, cuda_log, False, None),
        ("synthetic-cuda-oom-loading", synthetic_lines("cuda-oom-loading"),
         (REPO / "tests" / "fixtures" / "logs" / "cuda-oom-loading" / "worker.log").read_text(), False, None),
    ]
    for shot, shot_lines, shot_log, live, wait in synthetic:
        run = stage(tmp, shot, shot_lines, shot_log)
        out = out_dir / f"{shot}.svg"
        await shoot(run, out, "ftwatch: synthetic CUDA run", live, wait)
        made.append(out)
    return made


def synthetic_ranks(tmp: Path) -> Path:
    """A four-GPU run directory, live: three ranks training (one a little behind), rank 2 killed at step 21."""
    run = tmp / "synthetic-cuda-ddp"
    cuda = synthetic_lines("cuda", ending="running")
    cuts = {0: 40, 1: 38, 2: 21, 3: 40}
    log = []
    for rank, step in cuts.items():
        header = json.loads(cuda[0])
        header.update(rank=rank, local_rank=rank, world_size=4, local_world_size=4, node_rank=0,
                      pid=4321 + rank, device=dict(header["device"], index=rank))
        cut = next(i for i, line in enumerate(cuda) if f'"kind":"snapshot","phase":"training","step":{step},' in line)
        lines = [json.dumps(header, separators=(",", ":")) + "\n", *cuda[1:cut + 3]]
        if rank == 2:
            last_t = json.loads(lines[-1])["t"]
            lines.append(encode("exit", {"status": "failed", "step": step, "error_type": "WorkerVanished",
                                         "message": f"the training process of rank {rank} ended without an exit event",
                                         "by": "monitor", "last_event_t": last_t}, last_t + 1.0))
        (run / f"rank{rank}").mkdir(parents=True)
        (run / f"rank{rank}" / "events.jsonl").write_text("".join(lines))
        log += [f"ftwatch worker [rank {rank}]: training {header['model']} on cuda:{rank}\n"]
    log += [f"ftwatch worker [rank 0]: {{'loss': {2.4 - 0.1 * i:.3f}, 'epoch': {i / 10}}}\n" for i in range(4)]
    (run / "launch.json").write_text(json.dumps({"launcher": "torchrun", "launcher_pid": 4320, "world_size": 4,
                                                 "nproc_per_node": 4, "nnodes": 1, "node_rank": 0,
                                                 "ranks": [0, 1, 2, 3]}))
    (run / "worker.log").write_text("".join(log))
    return run


async def make_ranks(out_dir: Path, tmp: Path) -> list[Path]:
    """The multi-process screenshots: the recorded run whose rank 1 died, a synthetic four-GPU run."""
    made = []
    for shot, run, title, live in (
        ("ddp-rank-died", REPO / "tests" / "fixtures" / "logs" / "ddp-rank-died", "ftwatch: ddp-dead", False),
        ("synthetic-cuda-ddp", synthetic_ranks(tmp), "ftwatch: synthetic 4-GPU run", True),
    ):
        out = out_dir / f"{shot}.svg"
        await shoot(run, out, title, live)
        made.append(out)
    return made


def main() -> None:
    """Record (or take) a run and draw the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-run", type=Path, help="a recorded run directory instead of a fresh run")
    parser.add_argument("--out", type=Path, default=REPO / "screenshots")
    parser.add_argument("--no-png", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        source = args.from_run.resolve() if args.from_run else record_example(tmp)
        made = asyncio.run(make_all(source, args.out, tmp / "shots"))
        made += asyncio.run(make_ranks(args.out, tmp / "ranks"))
    if not args.no_png:
        if shutil.which("rsvg-convert") is None:
            print("rsvg-convert not found (apt-get install librsvg2-bin): SVG only")
        for svg in made:
            to_png(svg)


if __name__ == "__main__":
    main()
