"""Malformed configs: one clear line naming the file and the key, exit code 2, no traceback."""

from __future__ import annotations

import pytest

from conftest import TINY_DATA, TINY_MODEL, run_cli

GOOD_MODEL = f'[model]\nname = "{TINY_MODEL}"\n'
GOOD_DATA = f'[data]\npath = "{TINY_DATA}"\n'

# (file content, words the one error line must contain); {good} parts keep the rest valid
CASES = {
    "toml_syntax": ("[model\nname = 1\n", ["TOML syntax error", "line 1"]),
    "unknown_section": (GOOD_MODEL + GOOD_DATA + "[trainig]\nmax_steps = 1\n",
                        ["unknown section [trainig]", 'did you mean "training"']),
    "unknown_model_key": (GOOD_MODEL + 'dtpye = "float32"\n' + GOOD_DATA, ["[model].dtpye", '"dtype"']),
    "bad_dtype": (GOOD_MODEL + 'dtype = "fp8"\n' + GOOD_DATA, ["[model].dtype", "bfloat16", '"fp8"']),
    "wrong_type_rank": (GOOD_MODEL + GOOD_DATA + '[lora]\nr = "eight"\n',
                        ['[lora].r must be a positive integer, got "eight"']),
    "negative_rank": (GOOD_MODEL + GOOD_DATA + "[lora]\nr = -4\n", ["[lora].r must be a positive integer, got -4"]),
    "missing_model_path": ('[model]\nname = "./no-such-model"\n' + GOOD_DATA, ["[model].name", "no-such-model"]),
    "missing_model_section": (GOOD_DATA, ["[model] section is missing"]),
    "missing_data_file": (GOOD_MODEL + '[data]\npath = "nowhere.jsonl"\n', ["[data].path", "nowhere.jsonl"]),
    "zero_max_length": (GOOD_MODEL + GOOD_DATA.replace("\n", "\nmax_length = 0\n", 1),
                        ["[data].max_length must be a positive integer, got 0"]),
    "bad_budget": (GOOD_MODEL + GOOD_DATA + '[monitor]\nbudget = "lots"\n', ["[monitor].budget", "lots"]),
    "dropout_out_of_range": (GOOD_MODEL + GOOD_DATA + "[lora]\nlora_dropout = 1.5\n", ["[lora].lora_dropout"]),
    "both_quantizations": (GOOD_MODEL + "load_in_4bit = true\nload_in_8bit = true\n" + GOOD_DATA,
                           ["load_in_8bit cannot both be true"]),
    "section_not_a_table": ('model = "gpt2"\n' + GOOD_DATA, ["[model] must be a table"]),
    # checked by the worker against the installed peft / transformers classes
    "unknown_lora_field": (GOOD_MODEL + GOOD_DATA + "[lora]\nrank = 8\n", ['unknown key [lora].rank', '"r"']),
    "unknown_training_field": (GOOD_MODEL + GOOD_DATA + "[training]\nper_device_batch_size = 8\n",
                               ["[training].per_device_batch_size", '"per_device_train_batch_size"']),
    "bad_optimizer_name": (GOOD_MODEL + GOOD_DATA + '[training]\noptim = "adamw_fast"\n',
                           ["[training].optim", '"adamw_fast"', "adamw_torch"]),
    "wrong_type_in_library_field": (GOOD_MODEL + GOOD_DATA + '[training]\nwarmup_steps = "ten"\n',
                                    ["[training].warmup_steps", '"ten"']),
}


def _assert_one_clear_line(result, name: str, words: list[str]) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_gives_one_clear_line_and_exit_2(case, tmp_path):
    content, words = CASES[case]
    config = tmp_path / f"{case}.toml"
    config.write_text(content + f'\n[monitor]\nlog_dir = "{tmp_path / "runs"}"\n' if "[monitor]" not in content
                      else content.replace("[monitor]\n", f'[monitor]\nlog_dir = "{tmp_path / "runs"}"\n'))
    result = run_cli("run", str(config), "--headless")
    _assert_one_clear_line(result, config.name, words)
    assert not any((tmp_path / "runs").glob("*")), "a refused config leaves no run directory behind"


def test_missing_config_file(tmp_path):
    result = run_cli("run", str(tmp_path / "absent.toml"), "--headless")
    _assert_one_clear_line(result, "absent.toml", ["no such config file"])


def test_directory_instead_of_config(tmp_path):
    result = run_cli("run", str(tmp_path), "--headless")
    _assert_one_clear_line(result, str(tmp_path), ["is a directory"])


def test_unusable_log_dir_names_the_key(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = tmp_path / "logdir.toml"
    config.write_text(GOOD_MODEL + GOOD_DATA + f'[monitor]\nlog_dir = "{blocker / "runs"}"\n')
    result = run_cli("run", str(config), "--headless")
    _assert_one_clear_line(result, "logdir.toml", ["[monitor].log_dir", "cannot create a run directory"])


def test_usage_error_exits_2():
    result = run_cli("run")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_run_dir_copy_and_output_are_private_whatever_the_umask(tmp_path):
    """In-process: the config's copy is 0600 and the Trainer's output/ 0700 under umask 000."""
    import os
    import stat

    from ftwatch.commands.run import prepare_run_dir
    from ftwatch.common.config import load_config

    config = tmp_path / "c.toml"
    config.write_text(GOOD_MODEL + GOOD_DATA)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = os.umask(0)
    try:
        prepare_run_dir(load_config(config), run_dir)
    finally:
        os.umask(old)
    assert stat.S_IMODE((run_dir / "config.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE((run_dir / "output").stat().st_mode) == 0o700
    assert (run_dir / "config.toml").read_bytes() == config.read_bytes()


@pytest.mark.slow
def test_a_real_run_keeps_its_files_private_under_umask_000(tmp_path, tiny_config):
    import os
    import stat
    import subprocess
    import sys

    config = tiny_config(training={"max_steps": 1})
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "ftwatch", "run", str(config), "--headless"], capture_output=True,
                          text=True, timeout=300, env=env, umask=0)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert stat.S_IMODE((run_dir / "config.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE((run_dir / "output").stat().st_mode) == 0o700


def test_a_config_error_the_worker_finds_after_starting_is_still_one_line():
    """Data that changed after the parent's check is found by the worker once it measures: the run
    then ends as a config error too (one line, exit 2, run directory removed), not a failed run."""
    from ftwatch.commands.run import _is_config_error
    from ftwatch.runlog.state import RunState

    state = RunState()
    state.header = {"kind": "header", "name": "x"}
    state.exit = {"kind": "exit", "status": "failed", "error_type": "ConfigError", "message": "c.toml: [data].path"}
    assert _is_config_error(state)
    state.exit["error_type"] = "RuntimeError"
    assert not _is_config_error(state)
