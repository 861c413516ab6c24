"""``ftwatch run -- COMMAND``: its bad input (one line, exit 2, nothing left behind), the checks of
the command, the name of its run, and how the arguments are split at ``--``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ftwatch.commands.run_command import child_environment, last_line
from ftwatch.commands.run_command_checks import (
    is_python_name,
    run_name,
    shebang_names_python,
    split_command,
)
from ftwatch.training.wrapped import SITE_DIR
from fuzzkit import cli


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runs = tmp_path / "runs"
    monkeypatch.setenv("FTWATCH_LOG_DIR", str(runs))
    return runs


def _script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_neither_config_nor_command_is_one_usage_line(log_dir):
    cli("run").assert_one_line_error("ftwatch run", "config", "--")


def test_a_command_not_found(log_dir):
    cli("run", "--", "nope-no-such-command").assert_one_line_error("command not found", "nope-no-such-command")
    cli("run", "--", "train.py").assert_one_line_error("command not found", "python train.py")
    assert not log_dir.exists()


def test_nothing_after_the_dashes(log_dir):
    cli("run", "--headless", "--").assert_one_line_error("nothing after --")


def test_a_program_that_is_not_python(log_dir, tmp_path):
    cli("run", "--", "ls").assert_one_line_error("not a python program", "ls")
    shell = _script(tmp_path, "train.sh", "#!/bin/sh\necho hi\n")
    cli("run", "--", str(shell)).assert_one_line_error("not a python program")
    assert not log_dir.exists()


def test_a_config_and_a_command_together(log_dir, tmp_path):
    cli("run", str(tmp_path / "x.toml"), "--", sys.executable, "-c", "0").assert_one_line_error("not both")


def test_strict_belongs_to_config_runs(log_dir):
    cli("run", "--strict", "--", sys.executable, "-c", "0").assert_one_line_error("--strict")


def test_a_script_that_is_missing_exits_at_once(log_dir):
    outcome = cli("run", "--headless", "--", sys.executable, "missing-script.py")
    outcome.assert_one_line_error("exited at once", "code 2", "missing-script.py")
    assert not any(log_dir.iterdir())  # nothing measured: its run directory goes


def test_a_python_script_by_its_shebang_that_exits_at_once(log_dir, tmp_path):
    script = _script(tmp_path, "quits", "#!/usr/bin/env python3\nimport sys\nprint('bad flag', file=sys.stderr)\n"
                                        "sys.exit(4)\n")
    outcome = cli("run", "--headless", "--", str(script))
    outcome.assert_one_line_error("exited at once", "code 4", "bad flag")
    assert "bad flag" in outcome.stdout  # its own output, passed through as it came
    json_mode = cli("run", "--json", "--", str(script))  # there the command's output goes to stderr
    assert json_mode.code == 2 and json_mode.stdout == ""
    assert json_mode.stderr.splitlines()[-1].startswith("ftwatch run: the command exited at once (code 4)")


def test_a_command_that_ends_well_before_any_training_call(log_dir):
    outcome = cli("run", "--headless", "--", sys.executable, "-c", "print('no training here')")
    assert outcome.code == 0
    assert "nothing was measured" in outcome.stderr and "no training here" in outcome.stdout


@pytest.mark.parametrize("name", ["python", "python3", "python3.11", "pypy3", "/usr/bin/python3.12"])
def test_interpreter_names(name):
    assert is_python_name(name)


@pytest.mark.parametrize("name", ["ls", "pythonista", "ipython", "python-config", "bash"])
def test_not_interpreter_names(name):
    assert not is_python_name(name)


def test_shebangs(tmp_path):
    assert shebang_names_python(_script(tmp_path, "a", "#!/usr/bin/python3\n"))
    assert shebang_names_python(_script(tmp_path, "b", "#!/usr/bin/env -S python3 -u\n"))
    assert shebang_names_python(_script(tmp_path, "c", "#!/bin/sh\n'''exec' \"/very long/bin/python3\" \"$0\"\n"))
    assert shebang_names_python(_script(tmp_path, "d", "#!/bin/sh\n'''exec' /opt/venv/bin/python \"$0\" \"$@\"\n"))
    assert not shebang_names_python(_script(tmp_path, "e", "#!/bin/bash\nexec python x.py\n"))
    assert not shebang_names_python(_script(tmp_path, "f", "print('no shebang')\n"))
    (tmp_path / "g").write_bytes(b"\x7fELF\x02\x01")
    assert not shebang_names_python(tmp_path / "g")


def test_run_names():
    assert run_name(["python", "scripts/train_lora.py", "--lr", "1"]) == "train_lora"
    assert run_name(["accelerate", "launch", "--num_processes", "2", "sft.py"]) == "sft"
    assert run_name(["python", "-m", "trl.scripts.sft"]) == "sft"
    assert run_name(["/opt/bin/axolotl", "train", "cfg.yml"]) == "axolotl"


def test_split_at_the_dashes():
    assert split_command(["run", "--headless", "--", "python", "x.py", "--", "y"]) == (
        ["run", "--headless"], ["python", "x.py", "--", "y"])
    assert split_command(["run", "cfg.toml"]) == (["run", "cfg.toml"], None)
    assert split_command(["replay", "--", "dir"]) == (["replay", "--", "dir"], None)
    assert split_command(["run", "--metrics-port", "9400", "--"]) == (["run", "--metrics-port", "9400"], [])


def test_child_environment_puts_the_bootstrap_first(tmp_path):
    env = child_environment(tmp_path, "train", base={"PYTHONPATH": "/mine", "PATH": "/bin"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(SITE_DIR), "/mine"]
    assert (SITE_DIR / "sitecustomize.py").is_file()
    assert env["FTWATCH_RUN_DIR"] == str(tmp_path.resolve()) and env["FTWATCH_WRAPPED"] == "1"
    assert child_environment(tmp_path, "t", base={})["PYTHONPATH"] == str(SITE_DIR)


def test_last_line_is_safe_and_skips_blanks(tmp_path):
    log = tmp_path / "worker.log"
    log.write_bytes(b"first\nError: \x1b[31mred\x1b[0m\n\n   \n")
    assert "\x1b" not in last_line(log) and last_line(log).startswith("Error:")
    assert last_line(tmp_path / "absent") == ""


@pytest.mark.parametrize(("command", "expected"), [
    (["torchrun", "--nproc-per-node", "2", "x.py", "--nproc-per-node", "5"], ("torchrun", 2, 1)),
    (["torchrun", "--standalone", "--nproc_per_node=4", "--nnodes", "1:2", "x.py"], ("torchrun", 4, 2)),
    (["python", "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "trl.scripts.sft"], ("torchrun", 2, 1)),
    (["accelerate", "launch", "--multi_gpu", "--num_processes", "4", "--num_machines", "2", "x.py"],
     ("accelerate", 2, 2)),
])
def test_launchers_and_their_process_counts(command, expected):
    from ftwatch.commands.run_command_checks import launch_of

    launch = launch_of(command)
    assert launch is not None
    assert (launch.launcher, launch.nproc_per_node, launch.nnodes) == expected


@pytest.mark.parametrize("command", [
    ["python", "train.py", "--nproc-per-node", "2"],
    ["torchrun", "--nproc-per-node", "1", "x.py"],
    ["torchrun", "--nproc-per-node", "auto", "x.py"],
    ["accelerate", "launch", "--cpu", "--num_processes", "2", "x.py"],  # accelerate's one-process launcher
    ["accelerate", "launch", "x.py", "--multi_gpu", "--num_processes", "2"],  # the script's own arguments
])
def test_one_process_commands(command):
    from ftwatch.commands.run_command_checks import launch_of

    assert launch_of(command) is None
