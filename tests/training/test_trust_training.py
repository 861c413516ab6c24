"""Training never dies of the monitor: a full, read-only or immutable disk under the log, a failing
probe, sampler or forecaster, and SIGINT (the dashboard's ``k``) in a user's own script.

The counts of lost events are checked against what the disk really refused: a spy on ``os.write``
counts, for the log's descriptor, every write that raised and every line a short write cut.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_probe_cadence import TinyLM
from torch import nn

from conftest import EXAMPLES, REPO, tiny_sections, wait_for, write_config
from ftwatch.runlog import registry
from ftwatch.runlog.event_reader import EventDecoder, read_events
from ftwatch.runlog.event_writer import EventWriter
from ftwatch.training.live_analysis import LiveAnalysis
from ftwatch.training.probe import accounting
from ftwatch.training.probe.devices import DeviceSampler
from ftwatch.training.probe.probe import Probe
from ftwatch.training.worker_output import SafeStream, protect_output

LOSS_LINE = "cannot write the run log"
PAGE = os.sysconf("SC_PAGE_SIZE")


class WriteSpy:
    """Stands for ``os.write``: watches the writes to one file (by inode) and can refuse them.

    ``refused`` counts the writes to the file that raised (each is one event the writer could not
    write); ``cut`` the events of which a part reached the file before a write raised.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self.real = os.write
        self.path = path
        self.refusing: int | None = None  # an errno: refuse every write to the file with it
        self.short_once: int | None = None  # take only this many bytes of the next write, then refuse
        self.refused = 0
        self.cut = 0
        self._after_short = False
        self._inode: tuple[int, int] | None = None
        monkeypatch.setattr(os, "write", self)

    def _ours(self, fd: int) -> bool:
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        if self._inode is None:
            try:
                target = os.stat(self.path)
            except OSError:
                return False
            self._inode = (target.st_dev, target.st_ino)
        return (st.st_dev, st.st_ino) == self._inode

    def __call__(self, fd: int, data: bytes) -> int:
        if not self._ours(fd):
            return self.real(fd, data)
        try:
            if self.short_once is not None:
                n, self.short_once = self.short_once, None
                self.refusing = self.refusing or errno.ENOSPC
                written = self.real(fd, bytes(data[:n]))
            elif self.refusing is not None:
                raise OSError(self.refusing, os.strerror(self.refusing))
            else:
                written = self.real(fd, data)
        except OSError:
            self.refused += 1
            if self._after_short:
                self.cut += 1
            self._after_short = False
            raise
        self._after_short = written < len(data)
        return written


def _loop_steps(probe: Probe, model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> int:
    done = 0
    for step in steps:
        probe.step_begin()
        model(torch.randint(0, 50, (2, 5))).sum().backward()
        opt.step()
        opt.zero_grad()
        probe.step_end(step, loss=1.0 / step)
        done += 1
    return done


def _probe_with_model(run_dir: Path, **kwargs) -> tuple[Probe, nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = TinyLM()
    probe = Probe(run_dir, name="trust", device="cpu", sample_hz=kwargs.pop("sample_hz", 1), **kwargs)
    probe.start()
    probe.attach_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe.attach_optimizer(opt)
    probe.phase("training", max_steps=10)
    return probe, model, opt


def _read(run_dir: Path) -> tuple[list[dict], EventDecoder]:
    decoder = EventDecoder()
    return list(read_events(run_dir / "events.jsonl", decoder)), decoder


def _check_the_losses_are_told(events: list[dict], decoder: EventDecoder, spy: WriteSpy, err: str) -> None:
    """What the issue asks of a disk that refused writes, checked against what the spy saw."""
    assert spy.refused > 0, "the test refused nothing: it shows nothing"
    assert err.count(LOSS_LINE) == 1, err  # said once, not once per event
    notes = [e for e in events if e["kind"] == "note" and e["code"] == "events_lost"]
    assert notes, "no events_lost note after writing worked again"
    assert sum(n["lost_events"] for n in notes) == spy.refused
    exit_event = events[-1]
    assert exit_event["kind"] == "exit" and exit_event["status"] == "finished"
    assert exit_event["lost_events"] == spy.refused
    # a line cut by the full disk stays a line of its own: no event is glued onto it
    assert decoder.stats.corrupt_lines == spy.cut


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS, errno.EPERM, errno.EIO])
def test_refused_writes_are_counted_and_training_finishes(tmp_path, monkeypatch, capfd, error):
    run_dir = tmp_path / "run"
    probe, model, opt = _probe_with_model(run_dir)
    spy = WriteSpy(monkeypatch, run_dir / "events.jsonl")
    done = _loop_steps(probe, model, opt, range(1, 4))
    spy.short_once, spy.refusing = 17, error  # step 4's snapshot is cut after 17 bytes, then refused
    done += _loop_steps(probe, model, opt, range(4, 8))
    spy.refusing = None  # space is back
    done += _loop_steps(probe, model, opt, range(8, 11))
    probe.finish("finished", step=10)
    err = capfd.readouterr().err

    assert done == 10
    events, decoder = _read(run_dir)
    _check_the_losses_are_told(events, decoder, spy, err)
    assert os.strerror(error) in err
    assert spy.cut == 1
    steps = [e["step"] for e in events if e["kind"] == "snapshot"]
    assert steps == [1, 2, 3, 8, 9, 10]
    at = {e.get("code") or (e["kind"], e.get("step")): i for i, e in enumerate(events)}
    assert at[("snapshot", 3)] < at["events_lost"] < at[("snapshot", 8)]  # told as soon as writing works


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: ``tmpfs("300k")`` mounts a real tmpfs of that size (where ``mount`` is permitted, as
    for root in CI) and returns its path; skips elsewhere. Unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mount_point = tmp_path / f"disk{len(mounted)}"
        mount_point.mkdir()
        try:
            result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                                    capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"cannot mount a tmpfs here ({exc}); the refused-writes tests stand for it")
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); the refused-writes tests stand for it")
        mounted.append(mount_point)
        return mount_point

    yield mount
    for mount_point in mounted:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


def _fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; the file to delete for the space to come back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                if os.write(fd, chunk) == 0:
                    break
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    return filler


def test_a_real_full_disk_loses_events_not_the_run(tmpfs, monkeypatch, capfd):
    disk = tmpfs("300k")
    run_dir = disk / "run"
    probe, model, opt = _probe_with_model(run_dir, sample_hz=50)
    spy = WriteSpy(monkeypatch, run_dir / "events.jsonl")
    done = _loop_steps(probe, model, opt, range(1, 4))
    filler = _fill(disk)
    step = 4
    while spy.refused < 5 and step < 2000:  # train on until the full disk has refused a few events
        done += _loop_steps(probe, model, opt, range(step, step + 1))
        step += 1
    filler.unlink()
    done += _loop_steps(probe, model, opt, range(step, step + 3))
    probe.finish("finished", step=step + 2)
    err = capfd.readouterr().err

    assert done == step + 2
    events, decoder = _read(run_dir)
    _check_the_losses_are_told(events, decoder, spy, err)
    assert os.strerror(errno.ENOSPC) in err
    steps = {e["step"] for e in events if e["kind"] == "snapshot"}
    assert {1, 2, 3, step, step + 1, step + 2} <= steps
    assert events[-1]["step"] == step + 2


def test_a_log_made_immutable_mid_run_loses_events_not_the_run(tmp_path, monkeypatch, capfd):
    if shutil.which("chattr") is None:
        pytest.skip("no chattr here")
    run_dir = tmp_path / "run"
    probe, model, opt = _probe_with_model(run_dir)
    log = run_dir / "events.jsonl"
    spy = WriteSpy(monkeypatch, log)
    done = _loop_steps(probe, model, opt, range(1, 4))
    made = subprocess.run(["chattr", "+i", str(log)], capture_output=True, text=True)
    if made.returncode != 0:
        probe.finish("finished", step=3)
        pytest.skip(f"chattr +i is not permitted here ({made.stderr.strip()})")
    try:
        done += _loop_steps(probe, model, opt, range(4, 8))
    finally:
        subprocess.run(["chattr", "-i", str(log)], capture_output=True)
    done += _loop_steps(probe, model, opt, range(8, 11))
    probe.finish("finished", step=10)
    err = capfd.readouterr().err

    assert done == 10
    events, decoder = _read(run_dir)
    _check_the_losses_are_told(events, decoder, spy, err)
    assert [e["step"] for e in events if e["kind"] == "snapshot"] == [1, 2, 3, 8, 9, 10]


def test_a_device_that_is_always_full_never_raises(tmp_path, capfd):
    writer = EventWriter("/dev/full")  # every write fails with ENOSPC
    for i in range(5):
        writer.emit("phase", name=f"p{i}")
    writer.close()
    assert writer.lost_events == 5
    assert capfd.readouterr().err.count(LOSS_LINE) == 1


def test_a_closed_descriptor_is_reopened_and_the_loss_told(tmp_path, capfd):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path)
    writer.emit("phase", name="a")
    os.close(writer._fd)  # a script closing every descriptor it did not open
    writer.emit("phase", name="lost")
    writer.emit("phase", name="b")
    writer.close()
    events = list(read_events(path))
    assert [e.get("name") or e["code"] for e in events] == ["a", "events_lost", "b"]
    assert events[1]["lost_events"] == 1 and writer.lost_events == 1
    assert capfd.readouterr().err.count(LOSS_LINE) == 1


def test_a_log_that_cannot_be_opened_does_not_stop_the_probe(tmp_path, capfd):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the run directory should be")
    probe, model, opt = _probe_with_model(blocked / "run")
    assert registry.find(os.getpid()) is None  # nothing for `ftwatch attach` to find
    assert _loop_steps(probe, model, opt, range(1, 4)) == 3
    probe.finish("finished", step=3)
    err = capfd.readouterr().err
    assert err.count("ftwatch:") == 1 and "not recorded" in err


def test_a_nan_loss_is_written_as_unknown(tmp_path):
    probe, model, opt = _probe_with_model(tmp_path / "run")
    probe.step_begin()
    probe.step_end(1, loss=math.nan, lr=math.inf)
    probe.finish("finished", step=1)
    snapshot = next(e for e in read_events(tmp_path / "run") if e["kind"] == "snapshot")
    assert snapshot["loss"] is None and snapshot["lr"] is None


# -- internal failures ---------------------------------------------------------------------------------
def test_a_failing_measurement_is_recorded_once_and_switched_off(tmp_path, monkeypatch, capfd):
    calls = {"grads": 0}

    def broken_grad_bytes(params):
        calls["grads"] += 1
        raise RuntimeError("grad accounting exploded")

    monkeypatch.setattr(accounting, "grad_bytes", broken_grad_bytes)
    run_dir = tmp_path / "run"
    probe, model, opt = _probe_with_model(run_dir)

    def broken_stop():  # inside the forward hook, after the saved-tensors hooks were pushed
        raise RuntimeError("activation accounting exploded")

    monkeypatch.setattr(probe.meter, "stop", broken_stop)
    done = _loop_steps(probe, model, opt, range(1, 2))
    # the saved-tensors hooks were popped as the measurement failed (not at the next step)
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    assert not probe.meter.active and probe.meter._saved == []
    done += _loop_steps(probe, model, opt, range(2, 7))
    assert done == 6
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    probe.finish("finished", step=6)
    err = capfd.readouterr().err

    assert calls["grads"] == 1  # switched off after the first failure
    events = list(read_events(run_dir))
    failures = [e for e in events if e["kind"] == "note" and e["code"] == "probe_failed"]
    assert sorted(n["part"] for n in failures) == ["activations", "gradient accounting"]
    assert err.count("grad accounting exploded") == 1 and err.count("activation accounting exploded") == 1
    assert [e["step"] for e in events if e["kind"] == "snapshot"] == [1, 2, 3, 4, 5, 6]
    assert events[-1]["status"] == "finished"


def test_a_failing_sampler_stops_sampling_not_training(tmp_path, monkeypatch, capfd):
    ticks = {"n": 0}

    def broken_sample(self):
        ticks["n"] += 1
        raise RuntimeError("sampler exploded")

    monkeypatch.setattr(DeviceSampler, "_sample", broken_sample)
    probe, model, opt = _probe_with_model(tmp_path / "run", sample_hz=100)
    assert _loop_steps(probe, model, opt, range(1, 4)) == 3
    probe.finish("finished", step=3)
    assert ticks["n"] == 1  # the first failure stopped the sampler
    events = list(read_events(tmp_path / "run"))
    failures = [e for e in events if e["kind"] == "note" and e["code"] == "probe_failed"]
    assert [n["part"] for n in failures] == ["device sampler"]
    assert capfd.readouterr().err.count("sampler exploded") == 1
    assert events[-1]["status"] == "finished"


def test_a_failing_forecaster_is_recorded_once_and_no_longer_fed(tmp_path, capfd):
    class Broken:
        calls = 0

        def observe(self, event):
            Broken.calls += 1
            raise ValueError("forecast exploded")

    writer = EventWriter(tmp_path / "events.jsonl")
    analysis = LiveAnalysis(writer, Broken())
    writer.emit("sample", phase="training", rss=1)
    wait_for(lambda: any(e.get("code") == "forecast_failed" for e in read_events(tmp_path / "events.jsonl")), 30)
    for _ in range(5):
        writer.emit("sample", phase="training", rss=1)
    analysis.close()
    writer.close()
    assert Broken.calls == 1
    assert analysis._enqueue not in writer.listeners  # nothing piles up in its queue any more
    assert capfd.readouterr().err.count("forecast exploded") == 1


def test_the_workers_output_survives_a_full_disk(monkeypatch):
    full = open("/dev/full", "w", buffering=1)  # noqa: SIM115 - a line-buffered text stream on a full device
    stream = SafeStream(full)
    print("a line the disk cannot take", file=stream, flush=True)
    stream.write("more\n")
    stream.flush()
    assert stream.lost >= 2
    with contextlib.suppress(OSError):
        full.close()
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    first = protect_output()
    assert protect_output() == first  # wrapped once, not twice
    assert all(isinstance(s, SafeStream) for s in (sys.stdout, sys.stderr))


# -- SIGINT in a hand-written loop ------------------------------------------------------------------------
@pytest.fixture
def own_handler():
    """The script's own SIGINT handler (recording its calls), restored after the test."""
    calls: list[int] = []

    def handler(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield handler, calls
    finally:
        signal.signal(signal.SIGINT, previous)


def test_should_stop_ends_a_hand_written_loop_at_a_step_boundary(tmp_path, own_handler, capfd):
    handler, calls = own_handler
    probe, model, opt = _probe_with_model(tmp_path / "run")
    done = 0
    for step in range(1, 1000):
        if probe.should_stop:
            break
        done += _loop_steps(probe, model, opt, range(step, step + 1))
        if step == 3:
            signal.raise_signal(signal.SIGINT)  # what `k` in the dashboard sends
    assert done == 3 and calls == []  # the first SIGINT is ours: a stop request
    assert "stopping at the next step boundary" in capfd.readouterr().err
    signal.raise_signal(signal.SIGINT)  # the next goes to the script's own handler
    assert calls == [signal.SIGINT]
    probe.finish("stopped", step=done)
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    events = list(read_events(tmp_path / "run"))
    assert events[-1]["status"] == "stopped" and events[-1]["step"] == 3


def test_a_second_sigint_with_the_default_handler_interrupts(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        probe, model, opt = _probe_with_model(tmp_path / "run")
        assert probe.should_stop is False
        signal.raise_signal(signal.SIGINT)
        assert probe.should_stop is True
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        probe.finish("stopped", step=0)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_no_handler_for_the_worker_nor_from_another_thread(tmp_path, own_handler):
    import threading

    handler, _ = own_handler
    worker_probe, *_ = _probe_with_model(tmp_path / "w", handle_signals=False)
    assert worker_probe.should_stop is False and signal.getsignal(signal.SIGINT) is handler
    worker_probe.finish("finished")
    thread_probe, *_ = _probe_with_model(tmp_path / "t")
    seen = []
    thread = threading.Thread(target=lambda: seen.append(thread_probe.should_stop))
    thread.start()
    thread.join()
    assert seen == [False] and signal.getsignal(signal.SIGINT) is handler
    thread_probe.finish("finished")


def test_no_handler_under_torchrun(tmp_path, own_handler, monkeypatch):
    handler, _ = own_handler
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    probe, *_ = _probe_with_model(tmp_path / "r")
    assert probe.should_stop is False and signal.getsignal(signal.SIGINT) is handler
    probe.finish("finished")


# -- `k` on a user's own Trainer script ---------------------------------------------------------------------
USER_SCRIPT = textwrap.dedent('''
    import signal, sys, time
    sys.path.insert(0, {examples!r})
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback,
                              TrainingArguments, default_data_collator)
    from own_script import HERE, blocks
    from ftwatch import FtwatchCallback

    log_dir, mode = sys.argv[1], sys.argv[2]
    calls = []
    if mode == "chain":
        def own(signum, frame):
            calls.append(signum)
            print("own handler called", flush=True)
        signal.signal(signal.SIGINT, own)
    before = signal.getsignal(signal.SIGINT)

    class HoldTheBoundary(TrainerCallback):
        """In chain mode: once a stop is requested, wait at the step boundary for the next SIGINT."""
        def on_step_end(self, args, state, control, **kwargs):
            if mode == "chain" and control.should_training_stop:
                print("holding", flush=True)
                while not calls:
                    time.sleep(0.01)

    tokenizer = AutoTokenizer.from_pretrained(HERE / "tiny-llama")
    model = AutoModelForCausalLM.from_pretrained(HERE / "tiny-llama", dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    args = TrainingArguments(output_dir=log_dir + "/out", max_steps=100000, per_device_train_batch_size=4,
                             learning_rate=1e-3, report_to="none", save_strategy="no", use_cpu=True,
                             disable_tqdm=True, logging_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=blocks(tokenizer), data_collator=default_data_collator,
                      callbacks=[FtwatchCallback(log_dir=log_dir), HoldTheBoundary()])
    trainer.train()
    print(f"after train: step {{trainer.state.global_step}}", flush=True)
    print(f"handler restored: {{signal.getsignal(signal.SIGINT) is before}}", flush=True)
    print(f"own handler calls: {{len(calls)}}", flush=True)
''')


def _user_run(tmp_path: Path, mode: str, interrupts: list) -> tuple[int, str, str, list[dict]]:
    """Run the user's script, send SIGINTs as ``interrupts`` say (each waits on a condition first)."""
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT.format(examples=str(EXAMPLES)))
    log_dir = tmp_path / "runs"
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"

    def events() -> list[dict]:
        logs = list(log_dir.glob("*/events.jsonl"))
        return list(read_events(logs[0])) if logs else []

    with open(out_path, "w") as out, open(err_path, "w") as err:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = subprocess.Popen([sys.executable, str(script), str(log_dir), mode], stdout=out, stderr=err,
                                   cwd=tmp_path, env=env)
        try:
            for condition in interrupts:
                wait_for(lambda c=condition: c(events, out_path, err_path) or process.poll() is not None, 300)
                assert process.poll() is None, err_path.read_text()[-3000:]
                process.send_signal(signal.SIGINT)
            process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return process.returncode, out_path.read_text(), err_path.read_text(), events()


def _trained(steps: int):
    return lambda events, out, err: any(e["kind"] == "snapshot" and (e.get("step") or 0) >= steps for e in events())


@pytest.mark.slow
def test_k_on_a_users_trainer_script_returns_from_train(tmp_path):
    code, out, err, events = _user_run(tmp_path, "plain", [_trained(2)])
    assert code == 0, err[-3000:]
    assert "after train: step" in out and "handler restored: True" in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.count("stopping at the next step boundary") == 1
    last_step = max(e["step"] for e in events if e["kind"] == "snapshot" and e.get("step"))
    exit_event = events[-1]
    assert exit_event["kind"] == "exit" and exit_event["status"] == "stopped"
    assert "SIGINT" in exit_event["message"]
    assert exit_event["step"] == last_step == int(out.split("after train: step ")[1].split()[0])


@pytest.mark.slow
def test_a_second_sigint_goes_to_the_scripts_own_handler(tmp_path):
    holding = lambda events, out, err: "holding" in out.read_text()  # noqa: E731
    code, out, err, events = _user_run(tmp_path, "chain", [_trained(2), holding])
    assert code == 0, err[-3000:]
    assert "own handler called" in out and "own handler calls: 1" in out
    assert "after train: step" in out and "handler restored: True" in out
    assert "Traceback" not in err
    assert events[-1]["kind"] == "exit" and events[-1]["status"] == "stopped"


# -- a full disk under `ftwatch run` ----------------------------------------------------------------------------
def _syscw(pid: int) -> int:
    """Write system calls the process made so far (failed ones included)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw")


@pytest.mark.slow
def test_ftwatch_run_on_a_full_disk_finishes_and_counts_the_lost_events(tmpfs, tmp_path):
    disk = tmpfs("4m")  # once freed, room for ten minutes of this run's events: it lasts to the end
    runs = disk / "runs"
    steps = 150  # a few seconds on an idle machine: the disk is full (for about a second) well before the end
    sections = tiny_sections(tmp_path, training={"max_steps": steps}, monitor={"log_dir": str(runs), "sample_hz": 20})
    config = write_config(tmp_path / "full.toml", sections)
    viewer = subprocess.Popen([sys.executable, "-m", "ftwatch", "run", str(config), "--headless", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def events() -> list[dict]:
        logs = list(runs.glob("*/events.jsonl"))
        return list(read_events(logs[0])) if logs else []

    try:
        wait_for(lambda: any(e["kind"] == "snapshot" and (e.get("step") or 0) >= 2 for e in events())
                 or viewer.poll() is not None, timeout=300)
        pid = next(e["pid"] for e in events() if e["kind"] == "header")
        log = next(runs.glob("*/events.jsonl"))
        filler = _fill(disk)
        # the log can still grow to the end of its last page; once there, the disk refuses its writes
        wait_for(lambda: log.stat().st_size % PAGE == 0 or viewer.poll() is not None, timeout=300)
        writes = _syscw(pid)
        wait_for(lambda: _syscw(pid) >= writes + 40 or viewer.poll() is not None, timeout=300)  # refused writes
        filler.unlink()
        out, err = viewer.communicate(timeout=600)
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.communicate()
    assert viewer.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["status"] == "finished" and summary["steps"] == steps
    log = events()
    exit_event = log[-1]
    assert exit_event["kind"] == "exit" and exit_event["status"] == "finished" and exit_event["step"] == steps
    assert exit_event["lost_events"] > 0
    notes = [e for e in log if e["kind"] == "note" and e["code"] == "events_lost"]
    assert sum(n["lost_events"] for n in notes) == exit_event["lost_events"]
    missing = set(range(1, steps + 1)) - {e["step"] for e in log if e["kind"] == "snapshot"}
    assert len(missing) <= exit_event["lost_events"]  # every missing step is among the counted losses
