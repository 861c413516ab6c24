"""``ftwatch example [DIR]``: the bundled example written out for a wheel install.

What is checked against something independent of the command: the written model loads through
transformers' own ``from_pretrained`` with the parameter count its safetensors header gives; the
data file is byte for byte the installed package's; the files the command needs are matched by
``pyproject.toml``'s package-data globs (read here with tomllib and globbed on the source tree, as
setuptools does), so a wheel carries them without building one; the shipped size is measured.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

import pytest
import tomllib

from conftest import EXAMPLES, REPO
from ftwatch.commands import example
from fuzzkit import cli

PACKAGE_SRC = REPO / "src" / "ftwatch"


def _sha(path: Path | object) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # type: ignore[attr-defined]


def _one_spaced(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_the_written_example_loads_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftwatch.common.config import load_config

    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(home)
    outcome = cli("example", "mine")
    assert outcome.code == 0, outcome.stderr
    target = (home / "mine").resolve()
    assert f"next: ftwatch run {Path('mine') / 'tiny-lora.toml'}" in outcome.stdout

    monkeypatch.chdir(elsewhere)  # paths in the config are relative to it, not to where it is run
    cfg = load_config(Path("..") / "home" / "mine" / "tiny-lora.toml")
    model_dir = Path(cfg.model.name)
    assert cfg.model.is_local and model_dir == target / "tiny-llama"
    with safe_open(model_dir / "model.safetensors", framework="pt") as weights:
        stored = sum(_numel(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert sum(p.numel() for p in model.parameters()) == stored > 0
    assert AutoTokenizer.from_pretrained(model_dir).eos_token is not None

    assert cfg.data.path == target / "data" / "field-notes.jsonl"
    shipped = resources.files("ftwatch") / "bundled_example" / "data" / "field-notes.jsonl"
    assert _sha(cfg.data.path) == _sha(shipped)


def _numel(shape: list[int]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def test_every_file_is_a_copy_of_the_package_data(tmp_path: Path) -> None:
    assert cli("example", str(tmp_path / "ex")).code == 0
    written = sorted(p.relative_to(tmp_path / "ex").as_posix() for p in (tmp_path / "ex").rglob("*") if p.is_file())
    shipped = PACKAGE_SRC / "bundled_example"
    assert written == sorted(example.FILES)
    for name in written:
        assert _sha(tmp_path / "ex" / name) == _sha(shipped / name), name


def test_an_empty_directory_is_written_into(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert cli("example", str(tmp_path / "empty")).code == 0
    assert (tmp_path / "empty" / "tiny-lora.toml").is_file()


def test_a_non_empty_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    outcome = cli("example", str(target))
    outcome.assert_one_line_error("ftwatch example", str(target), "not empty")
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and (target / "notes.txt").read_text() == "mine"


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    cli("example", str(tmp_path / "f")).assert_one_line_error("ftwatch example", "not a directory")
    assert (tmp_path / "f").read_text() == "x"


def test_a_broken_install_says_what_is_missing_and_writes_nothing(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(example, "FILES", (*example.FILES, "tiny-llama/gone.bin"))
    outcome = cli("example", str(tmp_path / "ex"))
    assert outcome.code == 1 and "Traceback" not in outcome.stderr
    assert outcome.stderr.strip().count("\n") == 0 and "bundled_example/tiny-llama/gone.bin" in outcome.stderr
    assert not (tmp_path / "ex").exists()


def test_the_package_data_globs_ship_every_file_the_command_needs() -> None:
    """What a wheel would carry, without building one: setuptools globs each package-data pattern
    relative to the package directory."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["ftwatch"]
    matched = {p.relative_to(PACKAGE_SRC).as_posix() for pattern in patterns for p in PACKAGE_SRC.glob(pattern)
               if p.is_file()}
    needed = {f"{example.PACKAGE_DIR}/{name}" for name in example.FILES}
    assert needed <= matched, sorted(needed - matched)
    # nothing lies in the example directory that the command would not write out
    present = {p.relative_to(PACKAGE_SRC).as_posix() for p in (PACKAGE_SRC / example.PACKAGE_DIR).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert present == needed


def test_the_shipped_example_is_well_under_a_megabyte() -> None:
    size = sum((PACKAGE_SRC / example.PACKAGE_DIR / name).stat().st_size for name in example.FILES)
    assert 0 < size < 800 * 1024, size


def test_the_repository_examples_are_the_package_data_not_a_second_copy() -> None:
    package = PACKAGE_SRC / example.PACKAGE_DIR
    assert (EXAMPLES / "tiny-lora.toml").resolve() == (package / "tiny-lora.toml").resolve()
    assert (EXAMPLES / "tiny-llama").resolve() == (package / "tiny-llama").resolve()
    assert (EXAMPLES / "data" / "field-notes.jsonl").resolve() == (package / "data" / "field-notes.jsonl").resolve()


def test_run_help_points_at_ftwatch_example(capsys: pytest.CaptureFixture[str]) -> None:
    outcome = cli("run", "--help")
    assert outcome.code == 0
    text = _one_spaced(outcome.stdout)
    assert "`ftwatch example`" in text and "examples/tiny-lora.toml" not in text
    listing = _one_spaced(cli("--help").stdout)
    assert re.search(r"\bexample write a tiny model", listing), listing
