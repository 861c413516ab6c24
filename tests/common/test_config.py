"""Config parsing in-process: paths resolve relative to the file, defaults, and the library checks."""

from pathlib import Path

import pytest

from conftest import EXAMPLES, TINY_MODEL, tiny_sections, write_config
from ftwatch.common.config import load_config
from ftwatch.common.config_errors import ConfigError
from ftwatch.training.library_config import build_training_arguments, validate_library_sections


def test_bundled_example_loads_with_relative_paths():
    cfg = load_config(EXAMPLES / "tiny-lora.toml")
    assert Path(cfg.model.name) == TINY_MODEL.resolve() and cfg.model.is_local
    assert cfg.data.path == (EXAMPLES / "data" / "field-notes.jsonl").resolve()
    assert cfg.lora["r"] == 8 and cfg.training["max_steps"] == 60
    assert cfg.monitor.sample_hz == 10 and cfg.monitor.budget is None
    assert cfg.name == "tiny-lora"
    validate_library_sections(cfg)


def test_hub_ids_pass_through_and_budget_parses(tmp_path):
    sections = tiny_sections(tmp_path, model={"name": "deepseek-ai/deepseek-llm-7b-base"},
                             monitor={"budget": "22.3GB"})
    cfg = load_config(write_config(tmp_path / "c.toml", sections))
    assert cfg.model.name == "deepseek-ai/deepseek-llm-7b-base" and not cfg.model.is_local
    assert cfg.monitor.budget == 22_300_000_000


def test_training_defaults_are_quiet_but_user_values_win(tmp_path):
    cfg = load_config(write_config(tmp_path / "c.toml", tiny_sections(tmp_path, training={"report_to": "none"})))
    args = build_training_arguments(cfg, output_dir=str(tmp_path / "out"))
    assert args.disable_tqdm is True and args.output_dir == str(tmp_path / "out")
    assert args.per_device_train_batch_size == 4


@pytest.mark.parametrize(("section", "table", "message"), [
    ("lora", {"lora_alpha": "16"}, "[lora].lora_alpha must be a positive number"),
    ("lora", {"target_modules": []}, "[lora].target_modules must be a module name or a list"),
    ("training", {"bf16": "yes"}, "[training].bf16 must be true or false"),
    ("training", {"gradient_accumulation_steps": 0}, "[training].gradient_accumulation_steps must be a positive"),
    ("monitor", {"sample_hz": 5000}, "[monitor].sample_hz must be at most 1000"),
    ("monitor", {"sampling": 5}, "unknown key [monitor].sampling"),
    ("data", {"seq_len": 5}, 'unknown key [data].seq_len (did you mean "max_length"?)'),
])
def test_errors_name_the_key(tmp_path, section, table, message):
    path = write_config(tmp_path / "c.toml", tiny_sections(tmp_path, **{section: table}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize(("section", "key", "written", "where"), [
    ("model", "name", "./no-model", True), ("model", "name", "/nowhere/no-model", False),
    ("data", "path", "no-data.jsonl", True), ("data", "path", "/nowhere/no-data.jsonl", False),
])
def test_a_missing_path_says_where_it_was_looked_for_only_when_relative(tmp_path, section, key, written, where):
    path = write_config(tmp_path / "c.toml", tiny_sections(tmp_path, **{section: {key: written}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"[{section}].{key} no such" in str(info.value) and written in str(info.value)
    assert (f"(paths are relative to {tmp_path})" in str(info.value)) is where, str(info.value)


def test_library_check_catches_what_the_light_check_cannot(tmp_path):
    path = write_config(tmp_path / "c.toml", tiny_sections(tmp_path, lora={"use_rslroa": True}))
    cfg = load_config(path)
    with pytest.raises(ConfigError, match=r'unknown key \[lora\].use_rslroa \(did you mean "use_rslora"\?\)'):
        validate_library_sections(cfg)


@pytest.mark.parametrize(("section", "key", "literal"), [
    ("training", "learning_rate", "inf"), ("training", "learning_rate", "nan"), ("monitor", "sample_hz", "nan"),
    ("lora", "lora_alpha", "-inf"), ("training", "num_train_epochs", "inf"),
])
def test_non_finite_numbers_are_refused(tmp_path, section, key, literal):
    sections = tiny_sections(tmp_path)
    sections[section].pop(key, None)
    path = write_config(tmp_path / "c.toml", sections)
    path.write_text(path.read_text().replace(f"[{section}]\n", f"[{section}]\n{key} = {literal}\n", 1))
    with pytest.raises(ConfigError, match=rf"\[{section}\]\.{key} must be a positive number, got {literal}"):
        load_config(path)


@pytest.mark.parametrize(("steps", "ok"), [(-1, True), (1, True), (0, False), (-7, False), (-2, False)])
def test_max_steps_is_positive_or_minus_one(tmp_path, steps, ok):
    path = write_config(tmp_path / "c.toml", tiny_sections(tmp_path, training={"max_steps": steps}))
    if ok:
        assert load_config(path).training["max_steps"] == steps
        return
    with pytest.raises(ConfigError, match=r"\[training\]\.max_steps must be a positive integer \(or -1"):
        load_config(path)


def test_errors_are_one_line_without_control_characters(tmp_path):
    path = write_config(tmp_path / "c.toml", tiny_sections(tmp_path, data={"path": "PLACEHOLDER"}))
    path.write_text(path.read_text().replace("PLACEHOLDER", r"evil\u001b]0;title\u0007\nname"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "\n" not in text and "\x1b" not in text and "\x07" not in text
    assert "[data].path" in text


def test_a_config_that_is_not_a_regular_file_is_refused_without_reading(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.toml")  # reading it would block forever
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(tmp_path / "pipe.toml")
