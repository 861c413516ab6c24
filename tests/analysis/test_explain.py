"""``ftwatch explain``: every out-of-memory format PyTorch has printed, read into bytes.

Expected figures are computed here from the literal numbers in the fixtures (``int(1.23 * GiB)``),
never taken from the parser's own output.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FIXTURES_ROOT
from ftwatch.analysis.oom import OomDiagnosis, suggest_from_oom
from ftwatch.analysis.oom_parse import parse_oom_message, size_to_bytes

FIXTURES = FIXTURES_ROOT / "oom"
KiB, MiB, GiB = 1024, 1024**2, 1024**3

JSON_KEYS = {
    "format", "requested_bytes", "capacity_bytes", "free_bytes", "process_bytes", "allocated_bytes",
    "reserved_unallocated_bytes", "private_pools_bytes", "other_processes", "suggestions",
}


def parse_fixture(name: str) -> OomDiagnosis:
    diag = parse_oom_message((FIXTURES / name).read_text())
    assert diag is not None, f"{name} was not recognised"
    return diag


def configs(diag: OomDiagnosis) -> list[str | None]:
    return [s["config"] for s in suggest_from_oom(diag)]


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ftwatch", "explain", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


# --- sizes ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("number", "unit", "expected"), [
    ("1.23", "GiB", int(1.23 * GiB)),
    ("200.12", "MiB", int(200.12 * MiB)),
    ("1016.00", "KiB", 1016 * KiB),
    ("0", "bytes", 0),
    ("1023", "bytes", 1023),
    ("512", "B", 512),
    ("2.50", "GB", int(2.5 * GiB)),  # PyTorch's "GB" (MPS, some backends) is binary too
])
def test_sizes_are_read_as_pytorch_prints_them(number: str, unit: str, expected: int) -> None:
    assert size_to_bytes(number, unit) == expected


# --- one test per format ------------------------------------------------------------------------

def test_current_format() -> None:
    diag = parse_fixture("current.txt")
    assert diag.format == "current"
    assert diag.error_type == "torch.OutOfMemoryError"
    assert diag.device_index == 0
    assert diag.requested_bytes == int(2.00 * GiB)
    assert diag.capacity_bytes == int(79.15 * GiB)
    assert diag.free_bytes == int(1.23 * GiB)
    assert diag.process_bytes == int(77.91 * GiB)
    assert diag.allocated_bytes == int(75.10 * GiB)
    assert diag.reserved_unallocated_bytes == int(2.30 * GiB)
    assert diag.private_pools_bytes is None
    assert diag.other_processes == []
    assert diag.processes_listed is True
    assert diag.self_pid_guess is None
    assert diag.non_pytorch_bytes == int(77.91 * GiB) - int(75.10 * GiB) - int(2.30 * GiB)
    assert diag.message.startswith("CUDA out of memory. Tried to allocate 2.00 GiB.")
    assert diag.message.endswith("#environment-variables)")


def test_v21_format_with_capacty_typo_and_a_lone_process_clause() -> None:
    diag = parse_fixture("v2_1_capacty.txt")
    assert diag.format == "v2.1"
    assert diag.requested_bytes == int(20.00 * MiB)
    assert diag.capacity_bytes == int(22.20 * GiB)
    assert diag.free_bytes == int(12.06 * MiB)
    assert diag.allocated_bytes == int(21.50 * GiB)
    assert diag.reserved_unallocated_bytes == int(200.12 * MiB)
    # No "this process" clause, and PID 1234 holds more than PyTorch reserved (21.50 GiB + 200.12 MiB):
    # it is this process seen under another PID (a container), not another process.
    assert diag.self_pid_guess == 1234
    assert diag.process_bytes == int(22.18 * GiB)
    assert diag.other_processes == []


def test_legacy_format_reserved_in_total() -> None:
    diag = parse_fixture("legacy_reserved.txt")
    assert diag.format == "legacy"
    assert diag.error_type == "RuntimeError"
    assert diag.requested_bytes == int(20.00 * MiB)
    assert diag.capacity_bytes == int(22.20 * GiB)
    assert diag.allocated_bytes == int(21.50 * GiB)
    assert diag.free_bytes == int(12.06 * MiB)
    assert diag.reserved_unallocated_bytes == int(21.70 * GiB) - int(21.50 * GiB)
    assert diag.process_bytes is None
    assert diag.processes_listed is False


def test_legacy_format_with_allowed_fraction() -> None:
    diag = parse_fixture("legacy_allowed.txt")
    assert diag.format == "legacy"
    assert diag.allowed_bytes == int(19.80 * GiB)
    assert diag.free_bytes == int(20.02 * GiB)
    assert diag.reserved_unallocated_bytes == int(18.60 * GiB) - int(17.80 * GiB)
    cap_fix = suggest_from_oom(diag)[0]
    assert cap_fix["config"] is None and "set_per_process_memory_fraction" in cap_fix["change"]
    assert cap_fix["saves_bytes"] == int(39.59 * GiB) - int(19.80 * GiB)


def test_oldest_format_cached() -> None:
    diag = parse_fixture("legacy_cached.txt")
    assert diag.format == "legacy_cached"
    assert diag.device_index == 1
    assert diag.requested_bytes == int(64.00 * MiB)
    assert diag.capacity_bytes == int(10.76 * GiB)
    assert diag.allocated_bytes == int(9.20 * GiB)
    assert diag.free_bytes == int(3.06 * MiB)
    # "cached" was the old name of everything the allocator reserved.
    assert diag.reserved_unallocated_bytes == int(9.50 * GiB) - int(9.20 * GiB)


def test_several_processes_this_one_and_others() -> None:
    diag = parse_fixture("multi_process.txt")
    assert diag.process_bytes == int(15.88 * GiB)
    assert diag.self_pid_guess is None
    assert [(p.pid, p.bytes) for p in diag.other_processes] == [(40112, int(6.25 * GiB)), (40987, int(1.10 * GiB))]
    assert diag.other_processes_bytes == int(6.25 * GiB) + int(1.10 * GiB)
    top = suggest_from_oom(diag)[0]
    # The 512 MiB request with 301.44 MiB free is 210.56 MiB short: freeing PID 40112 alone covers it.
    assert "40112" in top["change"] and top["saves_bytes"] == int(6.25 * GiB)


def test_container_pids_without_a_this_process_clause() -> None:
    diag = parse_fixture("container_pids.txt")
    reserved = int(40.90 * GiB) + int(820.00 * MiB)
    assert int(42.30 * GiB) >= reserved > int(4.00 * GiB)
    assert diag.self_pid_guess == 2752205
    assert diag.process_bytes == int(42.30 * GiB)
    assert [(p.pid, p.bytes) for p in diag.other_processes] == [(2751001, int(4.00 * GiB))]


def test_private_pool_clause() -> None:
    diag = parse_fixture("private_pools.txt")
    assert diag.format == "current"
    assert diag.allocated_bytes == int(70.50 * GiB)
    assert diag.private_pools_bytes == int(6.25 * GiB)
    assert diag.reserved_unallocated_bytes == int(5.10 * GiB)
    assert diag.process_bytes == int(76.77 * GiB)


def test_allowed_clause_in_the_current_format() -> None:
    diag = parse_fixture("current_allowed.txt")
    assert diag.allowed_bytes == int(12.00 * GiB)
    assert diag.allocated_bytes == int(11.98 * GiB)
    assert diag.free_bytes == int(3.10 * GiB)
    assert diag.shortfall_bytes == 0


def test_wrapped_message_with_byte_units() -> None:
    diag = parse_fixture("wrapped_bytes.txt")
    assert diag.format == "current"
    assert diag.requested_bytes == 1016 * KiB
    assert diag.free_bytes == 0
    assert diag.reserved_unallocated_bytes == 1023
    assert diag.process_bytes == int(15.76 * GiB)


def test_accelerator_error_has_no_numbers_but_still_advises() -> None:
    diag = parse_fixture("accelerator_error.txt")
    assert diag.format == "accelerator_error"
    assert diag.error_type == "torch.AcceleratorError"
    assert diag.requested_bytes is None and diag.capacity_bytes is None
    assert "[training] gradient_checkpointing = true" in configs(diag)
    assert all(s["saves_bytes"] is None for s in suggest_from_oom(diag))


def test_runtime_cuda_error_out_of_memory() -> None:
    diag = parse_fixture("runtime_cuda_error.txt")
    assert diag.format == "accelerator_error"
    assert diag.error_type == "RuntimeError"


def test_pre_1_0_thc_error() -> None:
    diag = parse_oom_message("RuntimeError: cuda runtime error (2) : out of memory at "
                             "/pytorch/aten/src/THC/generic/THCStorage.cu:58")
    assert diag is not None and diag.format == "thc_runtime_error" and not diag.has_numbers


def test_cut_message_keeps_what_it_has() -> None:
    diag = parse_oom_message("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.50 GiB.")
    assert diag is not None
    assert diag.format == "truncated"
    assert diag.requested_bytes == int(3.50 * GiB)
    assert diag.capacity_bytes is None and diag.free_bytes is None


def test_the_last_message_in_a_log_wins() -> None:
    first = (FIXTURES / "legacy_reserved.txt").read_text()
    last = (FIXTURES / "current.txt").read_text()
    diag = parse_oom_message(first + "\nDuring handling of the above exception, another exception occurred:\n" + last)
    assert diag is not None and diag.format == "current"
    assert diag.requested_bytes == int(2.00 * GiB)


def test_no_oom_message() -> None:
    assert parse_oom_message((FIXTURES / "not_oom.txt").read_text()) is None
    assert parse_oom_message("") is None


# --- suggestions ----------------------------------------------------------------------------------

def test_fragmentation_leads_when_it_covers_the_shortfall() -> None:
    diag = parse_fixture("current.txt")
    suggestions = suggest_from_oom(diag)
    assert suggestions[0]["config"] == "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    assert suggestions[0]["saves_bytes"] == int(2.30 * GiB)
    levers = [s["config"] for s in suggestions[1:]]
    assert "[training] gradient_checkpointing = true" in levers
    assert "[model] load_in_4bit = true" in levers
    assert '[model] dtype = "bfloat16"' in levers
    assert all(s["saves_bytes"] is None for s in suggestions[1:])


def test_old_pytorch_gets_max_split_size_instead_of_expandable_segments() -> None:
    assert configs(parse_fixture("legacy_cached.txt"))[0] == "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128"


def test_small_fragmentation_is_not_suggested() -> None:
    # 150 MiB unallocated is below the 96 GiB request and below 10% of 79.15 GiB.
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" not in configs(parse_fixture("too_big.txt"))


def test_a_request_larger_than_the_gpu_puts_tensor_size_first() -> None:
    suggestions = suggest_from_oom(parse_fixture("too_big.txt"))
    assert suggestions[0]["config"].startswith("[training] per_device_train_batch_size")
    assert suggestions[1]["config"].startswith("[data] max_length")


def test_private_pools_are_sized() -> None:
    by_config = {s["config"]: s["saves_bytes"] for s in suggest_from_oom(parse_fixture("private_pools.txt"))}
    assert by_config["[training] torch_compile = false"] == int(6.25 * GiB)
    assert by_config["PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"] == int(5.10 * GiB)


def test_current_settings_make_config_lines_exact() -> None:
    diag = parse_fixture("current.txt")
    current = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "max_length": 1024,
               "gradient_checkpointing": True, "dtype": "bfloat16"}
    lines = [s["config"] for s in suggest_from_oom(diag, current)]
    assert "[training] per_device_train_batch_size = 4; gradient_accumulation_steps = 4" in lines
    assert "[data] max_length = 512" in lines
    assert "[training] gradient_checkpointing = true" not in lines
    assert '[model] dtype = "bfloat16"' not in lines


def test_to_json_names_every_figure_and_nulls_what_is_missing() -> None:
    data = parse_fixture("legacy_reserved.txt").to_json()
    assert set(data) >= JSON_KEYS
    assert data["format"] == "legacy"
    assert data["process_bytes"] is None and data["private_pools_bytes"] is None
    assert data["other_processes"] == []
    json.dumps(data)  # serialisable as is


# --- the command ------------------------------------------------------------------------------------

def test_cli_json_from_a_file() -> None:
    proc = run_cli(str(FIXTURES / "multi_process.txt"), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["format"] == "current"
    assert data["requested_bytes"] == int(512.00 * MiB)
    assert data["free_bytes"] == int(301.44 * MiB)
    assert data["other_processes"] == [{"pid": 40112, "bytes": int(6.25 * GiB)},
                                       {"pid": 40987, "bytes": int(1.10 * GiB)}]
    assert {"change", "config", "saves_bytes"} <= set(data["suggestions"][0])


def test_cli_reads_stdin_with_dash() -> None:
    proc = run_cli("-", "--json", stdin=(FIXTURES / "v2_1_capacty.txt").read_text())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["capacity_bytes"] == int(22.20 * GiB)


def test_cli_reads_stdin_without_argument_and_prints_text() -> None:
    proc = run_cli(stdin=(FIXTURES / "current.txt").read_text())
    assert proc.returncode == 0, proc.stderr
    assert "out of memory on GPU 0" in proc.stdout
    assert "79.15 GiB" in proc.stdout and "1.23 GiB" in proc.stdout and "2.30 GiB" in proc.stdout
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in proc.stdout


def test_cli_accelerator_error_text() -> None:
    proc = run_cli(str(FIXTURES / "accelerator_error.txt"))
    assert proc.returncode == 0, proc.stderr
    assert "no numbers" in proc.stdout
    assert "gradient_checkpointing = true" in proc.stdout


@pytest.mark.parametrize(("name", "phrase"), [
    ("not_oom.txt", "no CUDA out-of-memory message found in"),
    ("empty.txt", "is empty"),
    ("does-not-exist.txt", "no such file"),
])
def test_cli_without_a_message_exits_2_with_one_clear_line(name: str, phrase: str) -> None:
    proc = run_cli(str(FIXTURES / name), "--json")
    assert proc.returncode == 2
    assert phrase in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""


def test_cli_directory_is_a_usage_error() -> None:
    proc = run_cli(str(FIXTURES))
    assert proc.returncode == 2
    assert "is a directory" in proc.stderr and "Traceback" not in proc.stderr


# -- figures that cannot be true (issue 10) --------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.txt")))
def test_real_messages_have_plausible_figures(name: str) -> None:
    diag = parse_oom_message((FIXTURES / name).read_text())
    assert diag is None or diag.problems == []


def test_impossible_figures_are_named_and_nothing_is_reasoned_from_them() -> None:
    text = (FIXTURES / "current.txt").read_text().replace("1.23 GiB is free", "90.00 GiB is free")
    diag = parse_oom_message(text)
    assert diag is not None and len(diag.problems) == 1
    assert "free memory (90.00 GiB)" in diag.problems[0] and "79.15 GiB" in diag.problems[0]
    from ftwatch.analysis.oom import findings

    assert findings(diag) == [f"The message's figures cannot be true ({diag.problems[0]}): nothing is concluded "
                              "from them."]
    assert all(s["saves_bytes"] is None for s in suggest_from_oom(diag))  # nothing sized from them
    assert diag.to_json()["implausible"] == diag.problems


@pytest.mark.parametrize(("old", "new", "named"), [
    # free + this process above the card: each alone fits (79.15 GiB)
    ("1.23 GiB is free", "40.00 GiB is free", "together are more than the GPU's whole capacity"),
    # PyTorch holds more than the process has in use
    ("is allocated by PyTorch", "is allocated by PyTorch", None),
])
def test_figures_that_cannot_be_true_together_are_named(old: str, new: str, named: str | None) -> None:
    text = (FIXTURES / "current.txt").read_text().replace(old, new)
    diag = parse_oom_message(text)
    assert diag is not None
    if named is None:  # the unchanged message stays plausible: the sums hold for a real card
        assert diag.problems == []
    else:
        assert len(diag.problems) == 1 and named in diag.problems[0]


def test_pytorch_holding_more_than_the_process_is_named() -> None:
    diag = parse_oom_message((FIXTURES / "current.txt").read_text())
    assert diag is not None and diag.process_bytes is not None and diag.allocated_bytes is not None
    mine = diag.process_bytes / 2**30
    text = (FIXTURES / "current.txt").read_text().replace(f"{mine:.2f} GiB memory in use", "1.00 GiB memory in use")
    diag = parse_oom_message(text)
    assert diag is not None and len(diag.problems) == 1, text
    assert "PyTorch holds" in diag.problems[0] and "1.00 GiB" in diag.problems[0]
