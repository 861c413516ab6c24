"""A signal that lands while the worker writes its ending never costs the exit event.

Under torchrun a rank that fails on a dead peer gets the launcher's SIGTERM while it is diagnosing
its failure and writing its exit (the end-to-end test, test_ddp_run, cannot choose that moment;
here the signal is sent from inside the diagnosis)."""

from __future__ import annotations

import os
import signal

from conftest import tiny_sections, write_config
from ftwatch.common.config import load_config
from ftwatch.runlog.event_reader import read_events
from ftwatch.training.worker import EXIT_FAILED, Training
from ftwatch.training.worker_stop import StopControl


def test_sigterm_during_the_diagnosis_of_a_failure_leaves_the_workers_own_exit(tmp_path, monkeypatch) -> None:
    cfg = load_config(write_config(tmp_path / "c.toml", tiny_sections(tmp_path)))
    stop = StopControl()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop.install()
    try:
        training = Training(cfg, tmp_path / "run", stop)

        def peer_gone(*args: object) -> None:
            raise RuntimeError("gloo: Read error: Connection reset by peer")

        def diagnose(exc: BaseException) -> tuple[None, None]:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next bytecode, in here
            return None, None

        monkeypatch.setattr(training, "load_model", peer_gone)
        monkeypatch.setattr(training, "diagnose", diagnose)
        assert training.run() == EXIT_FAILED
        assert stop.requested  # the signal was noted, not raised
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
    end = list(read_events(tmp_path / "run"))[-1]
    assert (end["kind"], end["status"], end["by"]) == ("exit", "failed", "worker")
    assert "Connection reset by peer" in end["message"]


def test_release_gives_the_signals_their_default_action_back() -> None:
    stop = StopControl()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        stop.install()
        stop.end()
        stop.release()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
