"""A worker process started ahead of its run, so the config's library checks cost no extra start-up.

The checks that need transformers/peft/torch take seconds of imports, which the worker then needs
too. So ``ftwatch run`` makes the torch-free checks itself, then starts this process at once: it
imports the libraries, makes :func:`ftwatch.training.config_checks.check_with_libraries` and answers on its
stdout; meanwhile nothing exists yet (no run directory, no log, nothing loaded). If the config is
refused it exits; if not, ``ftwatch run`` creates the run directory and tells it to become the
worker, its imports already done.

Protocol (pipes to ``ftwatch run``), one JSON line each way:

- this process -> run: ``{"ok": true}``, ``{"error": "<the ConfigError line>"}`` or
  ``{"crash": "<what failed>"}`` (a bug of the checks: run then starts a plain worker);
- run -> this process: ``{"argv": [worker arguments], "log": "<run dir>/worker.log"}``; end of input
  instead: exit without a trace.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    """Check the config named by ``argv[0]``, answer, then wait to become the worker."""
    config_path = (argv if argv is not None else sys.argv[1:])[0]
    reply = _check(config_path)
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
    if "ok" not in reply:
        return 2
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # not needed after all (ftwatch run stopped, or a distributed launch)
    order = json.loads(line)
    log_fd = os.open(order["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    from ftwatch.training.worker import main as worker_main

    return worker_main(list(order["argv"]))


def _check(config_path: str) -> dict[str, Any]:
    try:
        from ftwatch.common.config import load_config
        from ftwatch.common.config_errors import ConfigError
        from ftwatch.training.config_checks import check_with_libraries
        from ftwatch.training.model_files import check_model_files
    except BaseException as exc:  # noqa: BLE001 - reported, never raised: a plain worker is started instead
        return {"crash": f"{type(exc).__name__}: {exc}"}
    try:
        cfg = load_config(config_path)
        needs = check_with_libraries(cfg, check_model_files(cfg))
        if needs:
            raise ConfigError(cfg.path, needs[0])
    except ConfigError as exc:
        return {"error": str(exc)}
    except BaseException as exc:  # noqa: BLE001
        return {"crash": f"{type(exc).__name__}: {exc}"}
    return {"ok": True}


class Prestarted:
    """``ftwatch run``'s side: the process started ahead, its verdict, and the hand-over."""

    def __init__(self, config_path: Path) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "ftwatch.training.prestart", str(config_path)],  # as given: errors name it so
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True, env=env)
        self.usable = False

    def verdict(self) -> str | None:
        """Wait for the checks: the error line of a refused config, else ``None`` (``usable`` tells
        whether this process can become the worker)."""
        assert self.process is not None and self.process.stdout is not None
        try:
            reply = json.loads(self.process.stdout.readline() or b"{}")
        except ValueError:
            reply = {}
        if "error" in reply:
            self.cancel()
            return str(reply["error"])
        self.usable = bool(reply.get("ok"))
        if not self.usable:
            self.cancel()
        return None

    def hand_over(self, worker_argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Make it the worker; the process is the caller's from now on."""
        assert self.process is not None and self.process.stdin is not None and self.usable
        process, self.process = self.process, None
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write((json.dumps({"argv": worker_argv, "log": str(log)}) + "\n").encode())
        process.stdin.close()
        process.stdout.close()
        return process

    def cancel(self) -> None:
        """End it, if it was not handed over (closing its input lets it exit; a kill makes sure)."""
        process, self.process = self.process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if process.poll() is None:
            process.kill()
        process.wait()


if __name__ == "__main__":
    sys.exit(main())
