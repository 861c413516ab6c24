"""What a new user meets first: the wait before the run's header says what it is for, the bundled
example's worker.log is free of the libraries' warnings, and ``estimate`` refuses a typo'd key with
the line ``run`` gives, before any expensive work."""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import sys
import time

import pytest

from conftest import EXAMPLES, TINY_DATA, TINY_MODEL, run_cli
from ftwatch.common.config_errors import ConfigError
from ftwatch.runlog.event_reader import read_events
from ftwatch.runlog.events import encode
from ftwatch.runlog.state import RunState
from ftwatch.training.worker import _say_starting
from views.test_dashboard_app import SMALL, FakeHandle, live_dir, make_app, screen_text, wait_for

LIBRARIES = ("torch", "transformers", "peft")


# -- the wait ----------------------------------------------------------------------------------------
def test_the_first_event_names_the_imports_when_the_libraries_are_not_loaded(tmp_path, monkeypatch):
    for name in LIBRARIES:  # a torchrun rank: a fresh Python (the names only; nothing imports here)
        monkeypatch.delitem(sys.modules, name, raising=False)
    log = tmp_path / "events.jsonl"
    _say_starting(log)
    events = list(read_events(log))
    assert [(e["kind"], e["code"]) for e in events] == [("note", "starting")]
    assert "importing torch, transformers and peft" in events[0]["message"]
    assert abs(events[0]["t"] - time.time()) < 60


def test_a_worker_started_ahead_names_the_device_set_up(tmp_path, monkeypatch):
    for name in LIBRARIES:  # the checks' process already imported them
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or object())
    log = tmp_path / "events.jsonl"
    _say_starting(log)
    (event,) = read_events(log)
    assert "importing" not in event["message"] and "setting up the device" in event["message"]


def test_an_unwritable_run_dir_costs_the_note_only(tmp_path):
    _say_starting(tmp_path / "no-such-dir" / "events.jsonl")  # no exception: the probe reports the log


def test_the_header_ends_the_wait_and_keeps_the_other_notes():
    t = 1_800_000_000.0
    state = RunState()
    state.apply(json.loads(encode("note", {"code": "starting", "message": "worker starting: x"}, t)))
    assert [n["code"] for n in state.notes] == ["starting"]
    state.apply(json.loads(encode("header", {"name": "r", "device": {"type": "cpu"}}, t + 3)))
    state.apply(json.loads(encode("note", {"code": "no_gpu", "message": "no CUDA device"}, t + 3)))
    assert [n["code"] for n in state.notes] == ["no_gpu"]
    assert state.summary()["notes"] == ["no CUDA device"]
    assert state.elapsed == 3.0  # the start-up is part of the run's time


async def test_the_waiting_line_says_the_stage_and_how_long_it_has_taken(tmp_path):
    started = time.time() - 5  # the worker wrote its note five seconds ago
    note = encode("note", {"code": "starting", "message": "worker starting: importing torch, transformers "
                                                          "and peft"}, started)
    run = live_dir(tmp_path, [note], log="")
    app = make_app(run / "events.jsonl", FakeHandle(run))  # type: ignore[arg-type]
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: "importing torch, transformers and peft" in screen_text(app))
        text = screen_text(app)
        assert "WAITING" in text and "waiting for the run to start writing its log" not in text
        took = re.search(r"importing torch, transformers and peft… (\d+(?:\.\d)?)s", text)
        assert took is not None, text
        assert 5.0 <= float(took.group(1)) <= 5.0 + (time.time() - started)  # honest: at least 5 s
        with (run / "events.jsonl").open("a") as f:
            f.write(encode("header", {"name": "tiny", "device": {"type": "cpu", "name": "x86_64",
                                                                  "capacity": 2**34}, "sample_hz": 10}))
            f.write(encode("sample", {"phase": None, "rss": 2**28}))
        await wait_for(pilot, lambda: "WAITING" not in screen_text(app))
        assert "worker starting" not in screen_text(app)  # gone with the wait, not left among the notes


async def test_without_the_note_the_old_waiting_line_stays(tmp_path):
    run = live_dir(tmp_path, [], log="")
    app = make_app(run / "events.jsonl", FakeHandle(run))  # type: ignore[arg-type]
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: "waiting for the run to start writing its log" in screen_text(app))


# -- estimate: the same "did you mean" as run ------------------------------------------------------------
TYPO = (f'[model]\nname = "{TINY_MODEL}"\n[data]\npath = "{TINY_DATA}"\n'
        "[training]\nper_device_train_batch_sizee = 2\n")
DID_YOU_MEAN = 'unknown key [training].per_device_train_batch_sizee (did you mean "per_device_train_batch_size"?)'


def test_estimate_refuses_a_typo_with_runs_line(tmp_path):
    config = tmp_path / "typo.toml"
    config.write_text(TYPO + f'[monitor]\nlog_dir = "{tmp_path / "runs"}"\n')
    run = run_cli("run", str(config), "--headless")
    estimate = run_cli("estimate", str(config))
    for result, prefix in ((run, "ftwatch run: "), (estimate, "ftwatch estimate: ")):
        assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
        assert result.stderr.splitlines() == [f"{prefix}{config}: {DID_YOU_MEAN}"], result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_estimate_checks_the_config_before_the_gpu_and_the_trace(tmp_path, monkeypatch):
    import ftwatch.analysis.advice as advice
    from ftwatch.commands import estimate

    def expensive(*args, **kwargs):
        raise AssertionError("reached before the config was checked")

    monkeypatch.setattr(estimate, "nvml_free_bytes", expensive)
    monkeypatch.setattr(advice, "estimate_and_advise", expensive)
    config = tmp_path / "typo.toml"
    config.write_text(TYPO)
    with pytest.raises(ConfigError, match=re.escape(DID_YOU_MEAN)):
        estimate.main(argparse.Namespace(config=str(config), gpu_memory=None, json=False, strict=False))


# -- the bundled example's worker.log --------------------------------------------------------------
@pytest.mark.slow
def test_the_bundled_example_runs_without_the_libraries_warnings(tmp_path):
    shutil.copytree(EXAMPLES, tmp_path / "examples", symlinks=False)  # as a user's copy: runs land in cwd
    result = run_cli("run", str(tmp_path / "examples" / "tiny-lora.toml"), "--headless", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "ftwatch-runs").iterdir()
    log = (run_dir / "worker.log").read_text()
    assert "finished after" in log, log  # the log is the worker's (not empty by accident)
    for warning in ("pin_memory", "is_gradient_checkpointing", "FutureWarning", "UserWarning"):
        assert warning not in log, log
    events = list(read_events(run_dir / "events.jsonl"))
    assert (events[0]["kind"], events[0].get("code")) == ("note", "starting")
    assert events[1]["kind"] == "header" and events[0]["t"] <= events[1]["t"]
    assert "note: worker starting" in result.stdout  # headless says it too, as it happens


def test_ls_finds_the_header_after_the_starting_note(tmp_path):
    from ftwatch.commands.ls import peek

    log = tmp_path / "events.jsonl"
    _say_starting(log)
    with log.open("a") as f:
        f.write(encode("header", {"name": "tiny", "max_steps": 60,
                                  "device": {"type": "cpu", "name": "x86_64", "capacity": 2**34}}))
    state = peek(log)
    assert state.capacity == 2**34 and state.max_steps == 60 and state.notes == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_run_says_what_the_checks_wait_for_on_a_terminal_then_takes_it_back(tmp_path, monkeypatch):
    from ftwatch.commands import run
    from ftwatch.common.config import load_config

    config = tmp_path / "typo.toml"
    config.write_text(TYPO)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with pytest.raises(ConfigError, match=re.escape(DID_YOU_MEAN)):  # found by the checks' process
        run.validate(load_config(config))
    assert terminal.getvalue() == "ftwatch run: checking the config with transformers and peft…\r\x1b[K"


def test_checkpointing_reaches_transformers_under_its_current_name(tmp_path):
    import warnings

    from transformers import TrainingArguments

    from ftwatch.common.config import load_config
    from ftwatch.training.library_config import build_training_arguments

    config = tmp_path / "ckpt.toml"
    config.write_text(f'[model]\nname = "{TINY_MODEL}"\n[data]\npath = "{TINY_DATA}"\n'
                      "[training]\nuse_cpu = true\ngradient_checkpointing = true\n"
                      'gradient_checkpointing_kwargs = {use_reentrant = false}\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = build_training_arguments(load_config(config), output_dir=str(tmp_path / "out"))
    assert not [w for w in caught if "checkpointing" in str(w.message)], [str(w.message) for w in caught]
    assert args.gradient_checkpointing is True  # what the config asked, under either name
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__:
        assert args.activation_checkpointing is True
