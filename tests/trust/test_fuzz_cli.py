"""Bad command-line arguments and bad ``explain`` inputs: one line naming what is wrong, exit 2.

argparse's own errors (a missing value, an unknown option, a value of the wrong type) and every
size or number option (``inf``, ``nan``, 400 digits, negative, zero) end the same way as the
commands' own usage errors: ``ftwatch CMD: --option: what is wrong``, one line, no usage block.
``explain`` refuses messages whose figures cannot be true instead of reasoning from them.
Everything runs in this process (``fuzzkit.cli``), before any expensive work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import EXAMPLES
from fuzzkit import cli

CONFIG = str(EXAMPLES / "tiny-lora.toml")
DIGITS_400 = "9" * 400

#: (arguments, words the one line must hold).
ARGUMENT_CASES: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("estimate", CONFIG, "--gpu-memory", "-5GiB"), ("ftwatch estimate: --gpu-memory", "positive", "-5GiB")),
    (("estimate", CONFIG, "--gpu-memory", "-0.5GB"), ("--gpu-memory", "positive")),
    (("estimate", CONFIG, "--gpu-memory", "inf"), ("--gpu-memory", "finite")),
    (("estimate", CONFIG, "--gpu-memory", "nan"), ("--gpu-memory", "finite")),
    (("estimate", CONFIG, "--gpu-memory", "-inf"), ("--gpu-memory",)),
    (("estimate", CONFIG, "--gpu-memory", DIGITS_400), ("--gpu-memory", "8 EiB")),
    (("estimate", CONFIG, "--gpu-memory", DIGITS_400 + "GiB"), ("--gpu-memory", "8 EiB")),
    (("estimate", CONFIG, "--gpu-memory", "0"), ("--gpu-memory", "zero")),
    (("estimate", CONFIG, "--gpu-memory", "24"), ("--gpu-memory", "needs a unit", '"24GiB"', "'24'")),
    (("fit", CONFIG, "--gpu-memory", "24"), ("ftwatch fit: --gpu-memory", "needs a unit")),
    (("estimate", CONFIG, "--gpu-memory", "x"), ("--gpu-memory", "expected a size", "'x'")),
    (("estimate", CONFIG, "--gpu-memory", ""), ("--gpu-memory",)),
    (("estimate", CONFIG, "--gpu-memory", "5 parsecs"), ("--gpu-memory", "unit")),
    (("estimate", CONFIG, "--gpu-memory", "1.5ZiB"), ("--gpu-memory", "unit")),
    (("estimate", CONFIG, "--gpu-memory"), ("ftwatch estimate: --gpu-memory", "expected one argument", "--help")),
    (("estimate",), ("ftwatch estimate", "required", "config")),
    (("estimate", CONFIG, "--bogus"), ("ftwatch estimate", "unrecognized", "--bogus")),
    (("replay", "x", "--rank", "-1"), ("ftwatch replay: --rank", "0 or more")),
    (("replay", "x", "--rank", "one"), ("ftwatch replay: --rank", "'one'")),
    (("replay", "x", "--rank", DIGITS_400), ("ftwatch replay: --rank",)),
    (("replay", "x", "--speed", "nan"), ("ftwatch replay: --speed",)),
    (("replay", "x", "--speed", "-inf"), ("ftwatch replay: --speed",)),
    (("replay", "x", "--json", "--csv"), ("ftwatch replay: --csv", "not allowed")),
    (("replay",), ("ftwatch replay", "required", "log")),
    (("attach", "1", "--metrics-port", "-5"), ("ftwatch attach: --metrics-port", "0 to 65535")),
    (("attach", "1", "--metrics-port", "70000"), ("--metrics-port", "0 to 65535")),
    (("attach", "1", "--metrics-port", DIGITS_400), ("--metrics-port", "port number")),
    (("attach", "1", "--metrics-port", "8080", "--metrics-linger", "inf"), ("--metrics-linger", "finite")),
    (("attach", "1", "--metrics-port", "8080", "--metrics-linger", "nan"), ("--metrics-linger",)),
    (("attach", "1", "--metrics-port", "8080", "--metrics-linger", "-1"), ("--metrics-linger", "negative")),
    (("attach", "1", "--metrics-port", "8080", "--metrics-linger", "1e400"), ("--metrics-linger", "finite")),
    (("run", CONFIG, "--metrics-port", "port"), ("ftwatch run: --metrics-port", "port number")),
    (("frobnicate",), ("ftwatch", "unknown command", "frobnicate")),
    (("replay", "\x1b]0;pwned\x07missing.jsonl"), ("ftwatch replay", "no such file", "missing.jsonl")),
    (("explain", "\x1b[2Jmissing.txt"), ("ftwatch explain", "no such file", "missing.txt")),
]


@pytest.mark.parametrize(("args", "needles"), ARGUMENT_CASES, ids=[" ".join(a)[:60] for a, _ in ARGUMENT_CASES])
def test_a_bad_argument_is_one_line_naming_it(args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    outcome = cli(*args)
    outcome.assert_one_line_error(*needles)
    assert "usage:" not in outcome.stderr and "\x1b" not in outcome.stderr and "\x07" not in outcome.stderr
    assert outcome.stdout == ""


CURRENT = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
           "79.15 GiB of which 1.23 GiB is free. Including non-PyTorch memory, this process has 77.91 GiB memory in "
           "use. Of the allocated memory 75.10 GiB is allocated by PyTorch, and 2.30 GiB is reserved by PyTorch but "
           "unallocated.")
LEGACY = ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 22.20 GiB total capacity; 21.50 GiB "
          "already allocated; 12.06 MiB free; 21.70 GiB reserved in total by PyTorch)")

#: (an edit of a real message, words the refusal must hold: which figure and why).
IMPLAUSIBLE = [
    (CURRENT, "79.15 GiB of which", "-5.00 GiB of which", ("capacity", "negative")),
    (CURRENT, "1.23 GiB is free", "90.00 GiB is free", ("free memory", "more than", "capacity")),
    (CURRENT, "77.91 GiB memory", "17179869184.00 GiB memory", ("this process", "8 EiB")),
    (CURRENT, "77.91 GiB memory", "100.00 GiB memory", ("this process", "more than", "79.15 GiB")),
    (CURRENT, "75.10 GiB is allocated", "750.10 GiB is allocated", ("allocated by PyTorch", "more than")),
    (CURRENT, "2.00 GiB.", "2.00 ZiB.", ("request", "ZiB")),
    (CURRENT, "1.23 GiB is free", "1.23 EiB is free", ("free memory", "EiB")),
    (CURRENT, "2.00 GiB.", "9" * 5000 + " GiB.", ("request", "5000 digits")),
    (CURRENT, "1.23 GiB", "1" + "0" * 5000 + ".00 GiB", ("digits",)),
    (CURRENT, "GPU 0 has", "GPU " + "7" * 5000 + " has", ("digits",)),
    (CURRENT, "79.15 GiB of which", "0.00 GiB of which", ("capacity is 0",)),
    (LEGACY, "12.06 MiB free", "99.00 GiB free", ("free memory", "more than")),
    (LEGACY, "22.20 GiB total", "-22.20 GiB total", ("capacity", "negative")),
]


@pytest.mark.parametrize(("message", "old", "new", "needles"), IMPLAUSIBLE,
                         ids=[f"{old}->{new[:20]}" for _, old, new, _ in IMPLAUSIBLE])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_explain_refuses_figures_that_cannot_be_true(tmp_path: Path, message: str, old: str, new: str,
                                                     needles: tuple[str, ...], as_json: bool) -> None:
    assert old in message
    path = tmp_path / "oom.txt"
    path.write_text(message.replace(old, new, 1))
    outcome = cli("explain", str(path), *(["--json"] if as_json else []))
    outcome.assert_one_line_error("ftwatch explain", "cannot be true", *needles)
    assert outcome.stdout == "" and "% of the GPU" not in outcome.stderr


def test_explain_of_the_real_messages_still_works() -> None:
    for message in (CURRENT, LEGACY):
        outcome = cli("explain", "-", "--json", stdin=message)
        assert outcome.code == 0, outcome.stderr
        assert json.loads(outcome.stdout)["implausible"] == []


@pytest.mark.parametrize(("target", "needles"), [
    ("/dev/zero", ("device",)), ("/dev/null", ("device",)),
])
def test_explain_refuses_devices(target: str, needles: tuple[str, ...]) -> None:
    cli("explain", target).assert_one_line_error("ftwatch explain", target, *needles)


@pytest.mark.parametrize(("content", "needles"), [
    (b"", ("empty",)), (b"\n\n", ("empty",)), (b"\xff\xfe\x00garbage\x00" * 100, ("no CUDA out-of-memory",)),
    (b"hello world", ("no CUDA out-of-memory",)), (("9" * 5000).encode(), ("no CUDA out-of-memory",)),
])
def test_explain_without_a_message_is_one_line(tmp_path: Path, content: bytes, needles: tuple[str, ...]) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(content)
    cli("explain", str(path)).assert_one_line_error("ftwatch explain", *needles)


def test_explain_output_carries_no_escape_sequences_from_the_input() -> None:
    crafted = CURRENT.replace("torch.OutOfMemoryError", "\x1b]0;pwned\x07torch.OutOfMemoryError")
    outcome = cli("explain", "-", stdin=crafted + " \x1b[2J\x9b31m")
    assert outcome.code == 0, outcome.stderr
    assert not any(c in outcome.stdout for c in ("\x1b", "\x07", "\x9b"))
    assert "out of memory" in outcome.stdout


@pytest.mark.parametrize(("value", "words"), [("-5GiB", "positive"), ("0", "positive"), ("inf", "finite"),
                                              (DIGITS_400, "8 EiB"), ("x", "expected a size")])
def test_the_size_argument_type_gives_the_real_message(capsys: pytest.CaptureFixture[str], value: str,
                                                       words: str) -> None:
    """For commands that parse a size in argparse (``type=size_argument``): a negative value reaches
    the check instead of being taken for an option."""
    from ftwatch.cli import Parser
    from ftwatch.commands.usage import size_argument

    parser = Parser(prog="ftwatch estimate")
    parser.add_argument("--gpu-memory", type=size_argument)
    assert parser.parse_args(["--gpu-memory", "24GiB"]).gpu_memory == 24 * 2**30
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--gpu-memory", value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("ftwatch estimate: --gpu-memory: ") and words in err and "(ftwatch estimate --help)" in err
