"""The kit's frame: paths, the global deadline, stages that record their errors, subprocesses.

Every stage runs inside :meth:`Kit.stage`: an exception is recorded (type, message, traceback tail)
and the next stage goes on. The results are saved to ``gpu-check.json`` after every stage, so a
hard kill still leaves what was measured.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = "gpu-check.json"
SUMMARY = "gpu-check.txt"
PYTEST_LOG = "pytest-gpu.txt"
FIXTURES_TAR = "fixtures.tar.gz"
LOGS_TAR = "run-logs.tar.gz"
KIT_VERSION = 1


class Kit:
    """One run of the kit: where it writes, how long it may take, what it found so far."""

    def __init__(self, repo: Path, out: Path, work: Path, dry_run: bool, deadline_s: float) -> None:
        self.repo = repo
        self.out = out
        self.work = work
        self.dry_run = dry_run
        self.deadline_s = deadline_s
        self.t0 = time.monotonic()
        self.python = sys.executable
        self.results: dict[str, Any] = {
            "kit": {"version": KIT_VERSION, "dry_run": dry_run, "deadline_s": deadline_s,
                    "started_unix": round(time.time(), 3), "argv": sys.argv[1:], "elapsed_s": None},
            "stages": {},
        }
        #: Files to pack: ``(path on disk, name in the fixtures tarball)``.
        self.fixture_files: list[tuple[Path, str]] = []
        #: Run directories to pack into the run-logs tarball: ``(path, name)``.
        self.log_dirs: list[tuple[Path, str]] = []
        self.no_ui_dir: Path | None = None
        #: Subprocesses running now (each in its own session): ended by id if the kit is stopped.
        self.children: dict[int, subprocess.Popen[Any]] = {}

    # -- time ---------------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds since the kit started."""
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        """Seconds left before the global deadline."""
        return self.deadline_s - self.elapsed()

    def cap(self, gpu_limit_s: float, keep_s: float = 0.0) -> float:
        """The time limit for one subprocess: ``gpu_limit_s`` at most on the GPU machine (whose
        minutes are counted), never more than what is left before the deadline less ``keep_s``, and
        at least 5 s. The dry run has no such cap: it rehearses the stages on a CPU that other work
        may be loading (``import torch`` alone has taken 20 s there), so a stage may use what is left."""
        left = self.remaining() - keep_s
        return max(5.0, left if self.dry_run else min(gpu_limit_s, left))

    def log(self, message: str) -> None:
        """One progress line on stdout (the device tool returns its tail)."""
        print(f"[gpu-kit {self.elapsed():6.1f}s] {message}", flush=True)

    # -- stages -------------------------------------------------------------------------------
    def stage(self, name: str, fn: Callable[..., Any], *args: Any, need_s: float = 0.0, **kwargs: Any) -> Any:
        """Run one stage; record ``ok``/``error``/``skipped`` and its seconds; never raise."""
        record: dict[str, Any] = {"status": None, "seconds": None, "error": None}
        self.results["stages"][name] = record
        if self.remaining() < need_s:
            record.update(status="skipped", error=f"deadline: {self.remaining():.0f} s left, {need_s:.0f} s needed")
            self.log(f"stage {name}: skipped ({record['error']})")
            self.save()
            return None
        self.log(f"stage {name} ...")
        start = time.monotonic()
        value = None
        try:
            value = fn(*args, **kwargs)
            record["status"] = "ok"
        except BaseException as exc:  # noqa: BLE001 - a stage's failure is a finding, not the end
            if isinstance(exc, KeyboardInterrupt):
                raise
            record.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000],
                          traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:])
            self.log(f"stage {name}: ERROR {record['error'][:300]}")
        record["seconds"] = round(time.monotonic() - start, 2)
        self.log(f"stage {name}: {record['status']} in {record['seconds']} s")
        self.save()
        return value

    def save(self) -> None:
        """Write ``gpu-check.json`` (atomically) with everything found so far."""
        self.results["kit"]["elapsed_s"] = round(self.elapsed(), 2)
        tmp = self.out / (RESULTS + ".tmp")
        tmp.write_text(json.dumps(jsonable(self.results), indent=1, sort_keys=False) + "\n")
        tmp.replace(self.out / RESULTS)

    # -- subprocesses ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment of the kit's subprocesses: ftwatch from ``src`` (not installed), offline."""
        env = dict(os.environ)
        paths = [str(self.repo / "src")]
        if self.no_ui_dir is not None:
            paths.insert(0, str(self.no_ui_dir))
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   FTWATCH_HOME=str(self.work / "ftwatch-home"))
        return env

    def run(self, args: list[str], timeout: float, cwd: Path | None = None, stdin: str | None = None) -> dict[str, Any]:
        """Run a command with a timeout (its whole process group is killed at the limit)."""
        timeout = max(1.0, timeout)
        start = time.monotonic()
        proc = subprocess.Popen(args, cwd=str(cwd or self.repo), env=self.env(), text=True,
                                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.children[proc.pid] = proc
        timed_out = False
        try:
            stdout, stderr = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
            stdout, stderr = proc.communicate()
        finally:
            self.children.pop(proc.pid, None)
        return {"args": args, "rc": proc.returncode, "timed_out": timed_out,
                "seconds": round(time.monotonic() - start, 2), "stdout": stdout, "stderr": stderr}

    def spawn(self, args: list[str], log_path: Path) -> dict[str, Any]:
        """Start a command in the background, its output into ``log_path``; :meth:`collect` ends it."""
        log = open(log_path, "w")  # noqa: SIM115 - closed by collect()
        log.write("$ " + " ".join(args[1:]) + "\n")
        log.flush()
        proc = subprocess.Popen(args, cwd=str(self.repo), env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        self.children[proc.pid] = proc
        return {"proc": proc, "log": log, "path": log_path, "start": time.monotonic(), "args": args}

    def collect(self, handle: dict[str, Any], limit_s: float) -> dict[str, Any]:
        """Wait for a background command (at most ``limit_s``, then its process group is killed)."""
        proc = handle["proc"]
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
        self.children.pop(proc.pid, None)
        handle["log"].close()
        return {"rc": proc.returncode, "timed_out": timed_out, "seconds": round(time.monotonic() - handle["start"], 1),
                "output": handle["path"].read_text(errors="replace")}

    def ftwatch(self, *args: str, timeout: float, cwd: Path | None = None, stdin: str | None = None) -> dict[str, Any]:
        """``python -m ftwatch ARGS`` (from ``src``)."""
        return self.run([self.python, "-m", "ftwatch", *args], timeout=timeout, cwd=cwd, stdin=stdin)


def kill_pid(pid: Any) -> bool:
    """End one process we started (a ``ftwatch run`` worker, in its own session), by its id."""
    if not isinstance(pid, int) or pid <= 1 or pid == os.getpid():
        return False
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except OSError:
        return False


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """End a process we started and its children (its own session), by its id."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def jsonable(value: Any) -> Any:
    """``value`` with every non-JSON leaf turned into something JSON can hold (NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    try:
        return int(value)  # ctypes / numpy integers from NVML
    except (TypeError, ValueError):
        return str(value)


def tail(text: str | None, limit: int = 3000) -> str:
    """The last ``limit`` characters of a text (subprocess output kept in the JSON)."""
    return (text or "")[-limit:]


def last_json_object(text: str) -> Any:
    """The JSON object a ``--json`` command printed (the whole stdout, else its last parseable line)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of a run log (bad lines skipped), each with its size in bytes as ``_bytes``."""
    events = []
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                event["_bytes"] = len(raw.rstrip(b"\n")) + 1
                events.append(event)
    return events


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a TOML config from nested dicts (strings, numbers, booleans, lists)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a valid TOML basic string
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value(v)}" for key, v in table.items() if v is not None)
        lines.append("")
    path.write_text("\n".join(lines))
    return path
