"""Generated bad configs: each is refused before the worker starts, as one line naming the file and
the key, by the validation `ftwatch run` and `ftwatch estimate` share (checked in-process, fast),
and a handful end to end as real subprocesses (exit 2, one line, no traceback, no run directory).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY_DATA, TINY_MODEL, tiny_sections, write_config
from ftwatch.common.config import load_config
from ftwatch.common.config_errors import ConfigError
from ftwatch.training.config_checks import check_config
from fuzzkit import cli, cli_subprocess

Build = Callable[[Path], Path]


def config_with(**overrides: dict[str, Any]) -> Build:
    """A builder: the tiny example's config with these keys changed."""
    def build(tmp: Path) -> Path:
        return write_config(tmp / "bad.toml", tiny_sections(tmp, **overrides))
    return build


def raw_config(section: str, line: str) -> Build:
    """The tiny example's config with one raw TOML ``key = value`` line in a section (for the inf and
    nan literals), replacing the key if the example has it."""
    key = line.split("=", 1)[0].strip()

    def build(tmp: Path) -> Path:
        sections = tiny_sections(tmp)
        sections.setdefault(section, {}).pop(key, None)
        path = write_config(tmp / "bad.toml", sections)
        path.write_text(path.read_text().replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1))
        return path
    return build


def data_file(name: str, content: bytes | str, **data: Any) -> Build:
    """The tiny example's config reading a data file with this content."""
    def build(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return write_config(tmp / "bad.toml", tiny_sections(tmp, data={"path": str(path), **data}))
    return build


def broken_model(breaker: Callable[[Path], None], **overrides: dict[str, Any]) -> Build:
    """A copy of the bundled tiny model with one file broken by ``breaker``."""
    def build(tmp: Path) -> Path:
        model = tmp / "model"
        shutil.copytree(TINY_MODEL, model)
        breaker(model)
        return write_config(tmp / "bad.toml", tiny_sections(tmp, model={"name": str(model)}, **overrides))
    return build


def edit_config_json(**changes: Any) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        record = json.loads((model / "config.json").read_text())
        record.update(changes)
        (model / "config.json").write_text(json.dumps(record))
    return edit


def model_asking(attention: str, **changes: Any) -> Build:
    """A copy of the tiny model with these config.json changes, run with this attention."""
    def build(tmp: Path) -> Path:
        model = tmp / "model"
        shutil.copytree(TINY_MODEL, model)
        edit_config_json(**changes)(model)
        return write_config(tmp / "bad.toml", tiny_sections(tmp, model={"name": str(model),
                                                                        "attn_implementation": attention}))
    return build


def write_file(name: str, content: bytes) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        (model / name).write_bytes(content)
    return edit


def remove(*names: str) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        for name in names:
            (model / name).unlink()
    return edit


def truncate_weights(keep: float) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        path = model / "model.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    return edit


def replace_header(header: bytes, length: int | None = None) -> Callable[[Path], None]:
    """Put another header on the weights (``length``: a lying length field)."""
    def edit(model: Path) -> None:
        path = model / "model.safetensors"
        data = path.read_bytes()
        (old,) = struct.unpack("<Q", data[:8])
        path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data[8 + old:])
    return edit


def shard_index(model: Path) -> None:
    """Weights split by an index that names a shard which is not there."""
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    header = _weights_header(model / "model-00001-of-00002.safetensors")
    names = [k for k in header if k != "__metadata__"]
    weight_map = {n: "model-00001-of-00002.safetensors" for n in names[:-1]}
    weight_map[names[-1]] = "model-00002-of-00002.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _weights_header(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8: 8 + length])


def fifo_data(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.jsonl")
    return write_config(tmp / "bad.toml", tiny_sections(tmp, data={"path": str(tmp / "pipe.jsonl")}))


def directory_data(tmp: Path) -> Path:
    (tmp / "data-dir").mkdir()
    return write_config(tmp / "bad.toml", tiny_sections(tmp, data={"path": str(tmp / "data-dir")}))


def output_under_a_file(tmp: Path) -> Path:
    (tmp / "blocker").write_text("a file")
    return write_config(tmp / "bad.toml", tiny_sections(tmp, training={"output_dir": str(tmp / "blocker" / "out")}))


def output_is_a_file(tmp: Path) -> Path:
    (tmp / "out-file").write_text("a file")
    return write_config(tmp / "bad.toml", tiny_sections(tmp, training={"output_dir": str(tmp / "out-file")}))


def huge_integer(tmp: Path) -> Path:
    path = write_config(tmp / "bad.toml", tiny_sections(tmp))
    path.write_text(path.read_text().replace("seed = 0", "seed = " + "9" * 5000))
    return path


def non_utf8_config(tmp: Path) -> Path:
    path = write_config(tmp / "bad.toml", tiny_sections(tmp))
    path.write_bytes(path.read_bytes().replace(b'"float32"', b'"float\xff32"'))
    return path


def fifo_config(tmp: Path) -> Path:
    os.mkfifo(tmp / "bad.toml")
    return tmp / "bad.toml"


GOOD_LINES = "".join(json.dumps({"text": f"line {i} of some training text"}) + "\n" for i in range(3))
NESTED = "[" * 100_000 + "]" * 100_000

#: (case, config builder, words the one error line holds besides the config's name).
CASES: list[tuple[str, Build, list[str]]] = [
    # numbers: inf, nan, zero, negative, wrong type, out of range
    ("lr_inf", raw_config("training", "learning_rate = inf"), ["[training].learning_rate", "inf"]),
    ("lr_nan", raw_config("training", "learning_rate = nan"), ["[training].learning_rate", "nan"]),
    ("lr_negative", config_with(training={"learning_rate": -1e-3}), ["[training].learning_rate"]),
    ("lr_zero", config_with(training={"learning_rate": 0}), ["[training].learning_rate"]),
    ("lr_string", config_with(training={"learning_rate": "fast"}), ["[training].learning_rate", '"fast"']),
    ("sample_hz_nan", raw_config("monitor", "sample_hz = nan"), ["[monitor].sample_hz", "nan"]),
    ("sample_hz_inf", raw_config("monitor", "sample_hz = inf"), ["[monitor].sample_hz"]),
    ("sample_hz_negative", config_with(monitor={"sample_hz": -3}), ["[monitor].sample_hz"]),
    ("sample_hz_zero", config_with(monitor={"sample_hz": 0}), ["[monitor].sample_hz"]),
    ("budget_inf", raw_config("monitor", "budget = inf"), ["[monitor].budget"]),
    ("budget_nan", raw_config("monitor", "budget = nan"), ["[monitor].budget"]),
    ("budget_negative", config_with(monitor={"budget": -5}), ["[monitor].budget"]),
    ("budget_400_digits", config_with(monitor={"budget": "9" * 400 + "GiB"}), ["[monitor].budget"]),
    ("budget_zero", config_with(monitor={"budget": "0GiB"}), ["[monitor].budget"]),
    ("budget_without_unit", config_with(monitor={"budget": "24"}), ["[monitor].budget", "needs a unit", "24GiB"]),
    ("budget_integer_of_a_few_bytes", config_with(monitor={"budget": 24}), ["[monitor].budget", "24 B;", "24GiB"]),
    ("budget_float_of_a_few_bytes", config_with(monitor={"budget": 1.5}), ["[monitor].budget", "1 B;", "1.5GiB"]),
    ("max_steps_zero", config_with(training={"max_steps": 0}), ["[training].max_steps", "-1", "got 0"]),
    ("max_steps_minus_7", config_with(training={"max_steps": -7}), ["[training].max_steps", "-1", "got -7"]),
    ("max_steps_float", config_with(training={"max_steps": 2.5}), ["[training].max_steps"]),
    ("max_steps_string", config_with(training={"max_steps": "10"}), ["[training].max_steps"]),
    ("epochs_inf", raw_config("training", "num_train_epochs = inf"), ["[training].num_train_epochs"]),
    ("epochs_zero", config_with(training={"num_train_epochs": 0}), ["[training].num_train_epochs"]),
    ("batch_zero", config_with(training={"per_device_train_batch_size": 0}), ["[training].per_device_train_batch"]),
    ("batch_negative", config_with(training={"per_device_train_batch_size": -2}), ["per_device_train_batch_size"]),
    ("accumulation_float", config_with(training={"gradient_accumulation_steps": 2.5}),
     ["[training].gradient_accumulation_steps"]),
    ("rank_zero", config_with(lora={"r": 0}), ["[lora].r"]),
    ("alpha_nan", raw_config("lora", "lora_alpha = nan"), ["[lora].lora_alpha"]),
    ("alpha_inf", raw_config("lora", "lora_alpha = inf"), ["[lora].lora_alpha"]),
    ("dropout_nan", raw_config("lora", "lora_dropout = nan"), ["[lora].lora_dropout"]),
    ("dropout_negative", config_with(lora={"lora_dropout": -0.1}), ["[lora].lora_dropout"]),
    ("warmup_ratio_above_1", config_with(training={"warmup_ratio": 1.5}), ["[training].warmup_ratio", "1.5"]),
    ("warmup_steps_negative", config_with(training={"warmup_steps": -5}), ["[training].warmup_steps"]),
    ("weight_decay_nan", raw_config("training", "weight_decay = nan"), ["[training].weight_decay", "finite"]),
    ("max_grad_norm_negative", config_with(training={"max_grad_norm": -1.0}), ["[training].max_grad_norm"]),
    ("num_workers_negative", config_with(training={"dataloader_num_workers": -1}),
     ["[training].dataloader_num_workers"]),
    ("seed_too_large", config_with(training={"seed": 2**40}), ["[training].seed"]),
    ("seed_negative", config_with(training={"seed": -1}), ["[training].seed"]),
    ("seed_5000_digits", huge_integer, ["seed", "too long"]),
    ("max_length_zero", config_with(data={"max_length": 0}), ["[data].max_length"]),
    ("max_length_negative", config_with(data={"max_length": -64}), ["[data].max_length"]),
    ("max_length_float", config_with(data={"max_length": 64.5}), ["[data].max_length"]),
    ("print_every_zero", config_with(monitor={"print_every": 0}), ["[monitor].print_every"]),
    ("activations_every_negative", config_with(monitor={"activations_every": -1}), ["[monitor].activations_every"]),
    ("nproc_zero", config_with(launch={"nproc_per_node": 0}), ["[launch].nproc_per_node"]),
    # library fields (checked against the installed peft / transformers)
    ("optim_bogus", config_with(training={"optim": "adamw_bogus"}), ["[training].optim", '"adamw_bogus"']),
    ("learning_rate_typo", config_with(training={"learnin_rate": 1e-3}), ["[training].learnin_rate", "learning_rate"]),
    ("lora_key_typo", config_with(lora={"use_rslroa": True}), ["[lora].use_rslroa", "use_rslora"]),
    ("library_field_wrong_type", config_with(training={"warmup_steps": "ten"}), ["[training].warmup_steps"]),
    ("scheduler_bogus", config_with(training={"lr_scheduler_type": "cosinus"}), ["[training].lr_scheduler_type"]),
    # the data file
    ("data_empty", data_file("empty.jsonl", ""), ["[data].path", "is empty"]),
    ("data_blank_txt", data_file("blank.txt", "\n   \n\t\n"), ["[data].path", "holds no text"]),
    ("data_empty_texts", data_file("void.jsonl", '{"text": ""}\n{"text": "  "}\n'), ["[data].text_field", "empty"]),
    ("data_wrong_text_field", data_file("d.jsonl", GOOD_LINES, text_field="body"),
     ['[data].text_field "body"', "line 1", '"text"']),
    ("data_not_json", data_file("d.jsonl", GOOD_LINES + "this is not json\n"), ["[data].path", "line 4", "not JSON"]),
    ("data_number_text", data_file("d.jsonl", '{"text": 42}\n'), ["[data].text_field", "line 1", "number"]),
    ("data_object_text", data_file("d.jsonl", '{"text": {"a": 1}}\n'), ["[data].text_field", "object"]),
    ("data_record_is_string", data_file("d.jsonl", GOOD_LINES + '"just a string"\n'),
     ["[data].path", "line 4", "expected an object"]),
    ("data_json_array_as_jsonl", data_file("d.jsonl", json.dumps([{"text": "a"}, {"text": "b"}], indent=1)),
     ["[data].path", "JSON array", "one object per line"]),
    ("data_non_utf8_jsonl", data_file("d.jsonl", GOOD_LINES.encode() + b'{"text": "caf\xe9"}\n'),
     ["[data].path", "line 4", "not UTF-8", "0xe9"]),
    ("data_non_utf8_txt", data_file("d.txt", b"first line\nsecond \xff\xfe line\n"), ["[data].path", "line 2", "UTF-8"]),
    ("data_nested_deep", data_file("d.jsonl", NESTED + "\n"), ["[data].path", "line 1", "not JSON"]),
    ("data_directory", directory_data, ["[data].path", "is a directory"]),
    ("data_fifo", fifo_data, ["[data].path", "not a regular file"]),
    ("data_missing", config_with(data={"path": "nowhere.jsonl"}), ["[data].path", "no such data file"]),
    ("data_json_not_array", data_file("d.json", '{"text": 1}\n'), ["[data].text_field"]),
    ("data_smaller_than_a_block", data_file("d.jsonl", '{"text": "tiny"}\n', max_length=256),
     ["[data].max_length = 256", "tokens"]),
    # the model's files
    ("model_config_not_json", broken_model(write_file("config.json", b"{not json")), ["[model].name", "config.json"]),
    ("model_config_missing", broken_model(remove("config.json")), ["[model].name", "no config.json"]),
    ("model_config_a_list", broken_model(write_file("config.json", b"[1, 2]")), ["[model].name", "JSON object"]),
    ("model_config_not_utf8", broken_model(write_file("config.json", b'{"model_type": "ll\xffama"}')),
     ["[model].name", "UTF-8"]),
    ("model_type_unknown", broken_model(edit_config_json(model_type="llamma")),
     ["[model].name", '"llamma"', '"llama"']),
    ("model_type_not_a_string", broken_model(edit_config_json(model_type=7)), ["[model].name", "model_type"]),
    ("model_type_not_causal", broken_model(edit_config_json(model_type="t5")), ["[model].name", "causal"]),
    ("weights_truncated", broken_model(truncate_weights(0.6)), ["[model].name", "model.safetensors", "cut short"]),
    ("weights_empty", broken_model(write_file("model.safetensors", b"")), ["[model].name", "safetensors"]),
    ("weights_header_length_lies", broken_model(replace_header(b"{}", length=2**40)), ["[model].name", "header"]),
    ("weights_header_not_json", broken_model(replace_header(b"not json at all")), ["[model].name", "not JSON"]),
    ("weights_shard_missing", broken_model(shard_index), ["[model].name", "model-00002-of-00002", "missing"]),
    ("torch_weights_garbage", broken_model(lambda m: ((m / "model.safetensors").unlink(),
                                                     (m / "pytorch_model.bin").write_bytes(b"garbage"))),
     ["[model].name", "pytorch_model.bin"]),
    ("tokenizer_corrupt", broken_model(write_file("tokenizer.json", b"{broken")), ["[model].name", "tokenizer"]),
    ("hub_id_invalid", config_with(model={"name": "not a valid id!!"}), ["[model].name", "hub id"]),
    # [lora] against the model
    ("target_typo", config_with(lora={"target_modules": ["q_prj"]}), ["[lora].target_modules", '"q_prj"', "q_proj"]),
    ("target_one_of_two", config_with(lora={"target_modules": ["q_proj", "v_prj"]}),
     ["[lora].target_modules", '"v_prj"']),
    ("target_regex_matches_nothing", config_with(lora={"target_modules": "nothing.*here"}),
     ["[lora].target_modules", "regular expression"]),
    ("target_regex_invalid", config_with(lora={"target_modules": "(["}), ["[lora].target_modules", "regular"]),
    ("target_not_a_layer", config_with(lora={"target_modules": ["self_attn"]}),
     ["[lora].target_modules", "LlamaAttention", "cannot adapt"]),
    ("target_regex_norms", config_with(lora={"target_modules": r".*norm"}), ["[lora].target_modules", "RMSNorm"]),
    ("modules_to_save_typo", config_with(lora={"modules_to_save": ["lm_hed"]}), ["[lora].modules_to_save", "lm_hed"]),
    # the config file itself
    ("config_not_utf8", non_utf8_config, ["UTF-8"]),
    ("config_fifo", fifo_config, ["not a regular file"]),
]

#: Refused by `run` only: `estimate` predicts the run from config.json and says what a run would miss.
RUN_ONLY: list[tuple[str, Build, list[str]]] = [
    ("weights_missing", broken_model(remove("model.safetensors")), ["[model].name", "no weights"]),
    ("tokenizer_missing", broken_model(remove("tokenizer.json", "tokenizer_config.json")),
     ["[model].name", "no tokenizer"]),
    ("output_dir_under_a_file", output_under_a_file, ["[training].output_dir", "not a directory"]),
    ("output_dir_is_a_file", output_is_a_file, ["[training].output_dir", "not a directory"]),
    # /proc takes no new directory even from root, whom os.access() always lets through
    ("output_dir_unwritable", config_with(training={"output_dir": "/proc/ftwatch-output"}),
     ["[training].output_dir", "not writable"]),
    ("attention_unknown", config_with(model={"attn_implementation": "sdpaa"}),
     ["[model].attn_implementation", '"sdpaa"', "not supported"]),
    # transformers refuses SDPA for the classes that lack it (gemma2, bloom) when it loads the model
    ("sdpa_on_a_class_without_it", model_asking("sdpa", model_type="gemma2", architectures=["Gemma2ForCausalLM"]),
     ["[model].attn_implementation", '"sdpa"', "Gemma2ForCausalLM"]),
]
if importlib.util.find_spec("flash_attn") is None:
    RUN_ONLY.append(("flash_attention_not_installed", config_with(model={"attn_implementation": "flash_attention_2"}),
                     ["[model].attn_implementation", "flash_attention_2"]))
if importlib.util.find_spec("bitsandbytes") is None:
    RUN_ONLY += [
        ("4bit_without_bitsandbytes", config_with(model={"load_in_4bit": True}), ["[model].load_in_4bit", "bitsandbytes"]),
        ("8bit_without_bitsandbytes", config_with(model={"load_in_8bit": True}), ["[model].load_in_8bit", "bitsandbytes"]),
    ]


def refusal(path: Path, purpose: str) -> str:
    """The one error line of the shared validation, as ``ftwatch run`` prints it (or fail)."""
    try:
        check_config(load_config(path), purpose)  # type: ignore[arg-type]
    except ConfigError as exc:
        return f"ftwatch run: {exc}"
    raise AssertionError(f"{path} was accepted for {purpose}")


def assert_names(line: str, path: Path, words: list[str]) -> None:
    assert "\n" not in line and "\r" not in line, line
    assert path.name in line, line
    for word in words:
        assert word.lower() in line.lower(), (word, line)


def test_there_are_at_least_50_generated_cases() -> None:
    assert len(CASES) + len(RUN_ONLY) >= 50


@pytest.mark.parametrize(("build", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_alike_by_run_and_estimate(build: Build, words: list[str], tmp_path: Path) -> None:
    path = build(tmp_path)
    line = refusal(path, "run")
    assert_names(line, path, words)
    if path.is_fifo():
        return  # nothing further to learn (and the estimate's read would be the same check)
    outcome = cli("estimate", str(path), "--gpu-memory", "80GiB")
    outcome.assert_one_line_error(path.name, *words)
    assert outcome.stderr.strip().removeprefix("ftwatch estimate: ") == line.removeprefix("ftwatch run: ")
    assert not (tmp_path / "runs").exists(), "a refused config leaves no run directory behind"


@pytest.mark.parametrize(("build", "words"), [c[1:] for c in RUN_ONLY], ids=[c[0] for c in RUN_ONLY])
def test_run_refuses_what_only_a_run_needs_and_estimate_notes_it(build: Build, words: list[str],
                                                                 tmp_path: Path) -> None:
    path = build(tmp_path)
    assert_names(refusal(path, "run"), path, words)
    outcome = cli("estimate", str(path), "--gpu-memory", "80GiB", "--json")
    assert outcome.code == 0, outcome.stderr
    notes = json.loads(outcome.stdout)["notes"]
    assert any("`ftwatch run` would refuse" in n and words[0] in n for n in notes), notes


def test_hub_id_not_cached_while_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_config(tmp_path / "hub.toml", tiny_sections(tmp_path, model={"name": "ftwatch-tests/never-cached-7b"}))
    line = refusal(path, "run")
    assert_names(line, path, ["[model].name", "ftwatch-tests/never-cached-7b", "HF_HUB_OFFLINE", "cache"])
    cli("estimate", str(path)).assert_one_line_error(path.name, "[model].name", "HF_HUB_OFFLINE")


def test_good_variants_are_accepted(tmp_path: Path) -> None:
    """The neighbours that are valid stay valid: -1 steps, a .json array, a CRLF .txt with a BOM, a
    regex and "all-linear" targets, a data set of exactly one block."""
    array = tmp_path / "d.json"
    array.write_text(json.dumps([json.loads(line) for line in TINY_DATA.read_text().splitlines() if line]))
    crlf = tmp_path / "d.txt"
    crlf.write_bytes(b"\xef\xbb\xbf" + b"".join(json.loads(line)["text"].encode() + b"\r\n"
                                                  for line in TINY_DATA.read_text().splitlines() if line))
    variants = [
        {"training": {"max_steps": -1, "num_train_epochs": 1}},
        {"data": {"path": str(array)}},
        {"data": {"path": str(crlf)}},
        {"lora": {"target_modules": r".*\.(q|v)_proj"}},
        {"lora": {"target_modules": "all-linear"}},
        {"lora": {"target_modules": ["self_attn.q_proj"]}},
        {"data": {"path": str(TINY_DATA), "packing": False, "max_length": 100_000}},
    ]
    for n, overrides in enumerate(variants):
        path = write_config(tmp_path / f"good-{n}.toml", tiny_sections(tmp_path, **overrides))
        assert check_config(load_config(path), "run") == [], overrides


def test_exactly_one_block_of_tokens_is_enough(tmp_path: Path) -> None:
    """The token count is the worker's: a data set of N tokens (each text's plus one EOS) fits
    max_length N and not N + 1 (counted independently with the tokenizers library)."""
    from tokenizers import Tokenizer

    text = "the quick brown fox jumps over the lazy dog"
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": text}) + "\n" + json.dumps({"text": text[:20]}) + "\n")
    tokenizer = Tokenizer.from_file(str(TINY_MODEL / "tokenizer.json"))
    total = sum(len(tokenizer.encode(t, add_special_tokens=False).ids) + 1 for t in (text, text[:20]))
    fits = write_config(tmp_path / "fits.toml", tiny_sections(tmp_path, data={"path": str(tmp_path / "d.jsonl"),
                                                                               "max_length": total}))
    assert check_config(load_config(fits), "run") == []
    over = write_config(tmp_path / "over.toml", tiny_sections(tmp_path, data={"path": str(tmp_path / "d.jsonl"),
                                                                               "max_length": total + 1}))
    assert_names(refusal(over, "run"), over, [f"[data].max_length = {total + 1}", f"({total} tokens"])


def test_token_count_stops_early_on_a_large_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent tokenizes only until one block is there, not the whole file."""
    import ftwatch.training.library_checks as checks

    big = tmp_path / "big.jsonl"
    big.write_text(GOOD_LINES * 20_000)
    seen: list[int] = []
    real = checks.load_tokenizer

    def counting(cfg: Any) -> Any:
        tokenizer = real(cfg)

        def call(texts: list[str], **kwargs: Any) -> Any:
            seen.append(len(texts))
            return tokenizer(texts, **kwargs)
        call.eos_token_id = tokenizer.eos_token_id  # type: ignore[attr-defined]
        return call

    monkeypatch.setattr(checks, "load_tokenizer", counting)
    path = write_config(tmp_path / "big.toml", tiny_sections(tmp_path, data={"path": str(big), "max_length": 64}))
    assert check_config(load_config(path), "run") == []
    assert 0 < sum(seen) <= checks.TOKENIZE_BATCH < 60_000


def test_no_cuda_context_from_the_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The viewer's checks build TrainingArguments without setting a device up (that would create a
    CUDA context in the viewer, holding GPU memory beside the run): with a GPU pretended, the real
    arguments call torch.cuda.set_device and the checks do not."""
    import torch

    from ftwatch.training.library_config import build_training_arguments

    calls: list[Any] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(device))
    path = write_config(tmp_path / "c.toml", tiny_sections(tmp_path, training={"use_cpu": False}))
    cfg = load_config(path)
    check_config(cfg, "run")
    assert calls == []
    build_training_arguments(cfg, output_dir=str(tmp_path / "out"))  # the spy sees what the worker does
    assert calls


# --- end to end: the real commands as subprocesses -------------------------------------------------------

E2E = {
    "lr_inf": ("run", "--headless"),
    "target_typo": ("run", "--headless"),
    "data_non_utf8_jsonl": ("run", "--json"),
    "weights_truncated": ("run", "--detach"),
    "optim_bogus": ("estimate",),
    "data_smaller_than_a_block": ("estimate", "--json"),
}


@pytest.mark.parametrize("case", sorted(E2E))
def test_end_to_end_one_line_exit_2_no_run_directory(case: str, tmp_path: Path) -> None:
    _, build, words = next(c for c in CASES if c[0] == case)
    path = build(tmp_path)
    command, *flags = E2E[case]
    outcome = cli_subprocess(command, str(path), *flags, cwd=tmp_path)
    outcome.assert_one_line_error(path.name, *words)
    assert outcome.stdout == ""
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
