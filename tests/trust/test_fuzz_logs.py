"""Bad run logs through every replay output: never a traceback, never a hang, always a clear end.

A log with some good events replays them (exit 0) with the bad lines skipped and counted; a log
with none is refused with one line and exit 2. Each case is generated from a small good log by
breaking one field that a consumer reads (the wrong type, NaN, 10**400 bytes, ...), or is a
whole file that is no log at all (binary, a JSON array, deep nesting, huge lines, FIFOs, devices).
Everything runs in this process (``fuzzkit.cli``) except the few cases that need a process boundary.
"""

from __future__ import annotations

import copy
import json
import os
import random
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import FIXTURES_ROOT
from ftwatch.runlog.event_reader import MAX_LINE_CHARS, EventDecoder
from ftwatch.runlog.events import encode, encode_event
from ftwatch.views.dashboard.demo import synthetic_lines
from fuzzkit import Outcome, cli

FIXTURES = FIXTURES_ROOT / "logs"

MODES: tuple[tuple[str, ...], ...] = (("--headless",), ("--json",), ("--csv",), ("--plot",))
_DEMO = synthetic_lines("cuda", steps=6, ending="oom")
_T0 = json.loads(_DEMO[0])["t"]
_EXTRA = [
    encode("estimate", {"params_total": 7_000_000, "params_trainable": 40_000,
                        "estimate_bytes": {"weights": 14 * 2**30, "lora": 2**20, "total": 20 * 2**30},
                        "loading_bytes": 15 * 2**30, "capacity_bytes": 80 * 2**30, "capacity_source": "nvml",
                        "verdict": "fits", "fails_at": None,
                        "suggestions": [{"change": "less", "config": "[data] max_length = 64", "saves_bytes": 5}]},
           _T0),
    encode("note", {"code": "no_nvml", "message": "NVML is not available"}, _T0),
]
_BASE = _DEMO[:1] + _EXTRA + _DEMO[1:]
_BASE_EVENTS = [json.loads(line) for line in _BASE]
#: The good events the base log holds (every one decodes: checked below).
GOOD = len(_BASE_EVENTS)
INF = float("inf")
NAN = float("nan")


def _first_index(kind: str) -> int:
    return next(i for i, e in enumerate(_BASE_EVENTS) if e["kind"] == kind)


def _set(event: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target = event
    for name in parents:
        if not isinstance(target.get(name), dict):
            target[name] = {}
        target = target[name]
    if value is _DELETE:
        target.pop(last, None)
    else:
        target[last] = value


_DELETE = object()

#: (kind, field path, bad value): each breaks what some consumer reads of that kind.
FIELD_CASES: list[tuple[str, str, Any]] = [
    ("header", "t", "now"), ("header", "t", -1), ("header", "t", 10**400), ("header", "t", True),
    ("header", "name", 5), ("header", "name", ["run"]), ("header", "model", {"a": 1}),
    ("header", "device", "cuda:0"), ("header", "device", [0]), ("header", "device.capacity", -5 * 2**30),
    ("header", "device.capacity", "80GB"), ("header", "device.capacity", 10**400), ("header", "device.index", -1),
    ("header", "device.index", "0"), ("header", "device.name", 7), ("header", "device.type", ["cuda"]),
    ("header", "pid", -1), ("header", "pid", "123"), ("header", "pid", 2**40), ("header", "pid", 0),
    ("header", "max_steps", "10"), ("header", "max_steps", -3), ("header", "max_steps", 2.5),
    ("header", "budget", -1), ("header", "world_size", 1.5), ("header", "rank", "0"), ("header", "versions", "1.0"),
    ("header", "sample_hz", "fast"), ("header", "sample_hz", INF),
    ("phase", "name", _DELETE), ("phase", "name", None), ("phase", "name", 3), ("phase", "name", {"x": 1}),
    ("phase", "max_steps", "many"),
    ("model", "params_total", "7B"), ("model", "params_total", -1), ("model", "params_trainable", 1.5),
    ("model", "lora_targets", "q_proj"), ("model", "lora_targets", [1, 2]),
    ("sample", "t", "soon"), ("sample", "t", NAN), ("sample", "t", INF), ("sample", "rss", "big"),
    ("sample", "rss", 10**400), ("sample", "rss", 2**63), ("sample", "rss", 1.5e300), ("sample", "rss", NAN),
    ("sample", "cpu_percent", INF), ("sample", "cpu_percent", "high"), ("sample", "phase", 5),
    ("sample", "cuda", "x"), ("sample", "cuda", [1]), ("sample", "cuda.allocated", "1"),
    ("sample", "cuda.reserved", 2**64), ("sample", "cuda.ooms", -1), ("sample", "nvml", 5),
    ("sample", "nvml.process", "p"), ("sample", "nvml.process", 10**400), ("sample", "nvml.others", "none"),
    ("sample", "nvml.others", [[1]]), ("sample", "nvml.others", [["pid", 5]]), ("sample", "nvml.util", "high"),
    ("snapshot", "loss", "low"), ("snapshot", "loss", NAN), ("snapshot", "loss", INF), ("snapshot", "loss", -INF),
    ("snapshot", "loss", 10**400), ("snapshot", "loss", [1.0]), ("snapshot", "step", -1), ("snapshot", "step", "3"),
    ("snapshot", "step", 2.0), ("snapshot", "step", 1.5), ("snapshot", "categories", [1, 2]),
    ("snapshot", "categories", "weights"), ("snapshot", "categories", {"weights": "1"}),
    ("snapshot", "categories", {"weights": -5}), ("snapshot", "categories", {"weights": 10**400}),
    ("snapshot", "categories", {"weights": NAN}), ("snapshot", "categories", {"weights": 1.5}),
    ("snapshot", "categories", {"weights": {"a": 1}}), ("snapshot", "lr", "x"), ("snapshot", "tokens", -1),
    ("snapshot", "seq_len", "long"), ("snapshot", "activations_measured", "no"),
    ("snapshot", "allocated_peak", "x"),
    ("warning", "message", 5), ("warning", "message", {"a": 1}), ("warning", "level", 3), ("warning", "code", []),
    ("warning", "suggestions", "use less"), ("warning", "suggestions", [1]),
    ("warning", "suggestions", [{"change": 5}]), ("warning", "suggestions", [{"saves_bytes": "1GB"}]),
    ("warning", "steps_to_oom", "soon"), ("warning", "step", "x"),
    ("note", "message", ["x"]), ("note", "code", 1),
    ("estimate", "estimate_bytes", "x"), ("estimate", "estimate_bytes", {"total": "1"}), ("estimate", "verdict", 1),
    ("estimate", "params_total", "x"), ("estimate", "capacity_bytes", "x"), ("estimate", "suggestions", {"a": 1}),
    ("exit", "status", _DELETE), ("exit", "status", 1), ("exit", "step", "x"), ("exit", "message", 5),
    ("exit", "traceback", 5), ("exit", "traceback", [1]), ("exit", "oom", "x"),
    ("exit", "oom.requested_bytes", "1"), ("exit", "oom.last_categories", [1]), ("exit", "oom.phase", 1),
    ("exit", "suggestions", "x"), ("exit", "last_event_t", "x"), ("exit", "by", 5),
]


def _dump(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":")) + "\n"  # allow_nan: NaN/Infinity literals, as a crafted log


def broken_log(tmp_path: Path, kind: str, path: str, value: Any) -> Path:
    lines = list(_BASE)
    index = _first_index(kind)
    event = copy.deepcopy(_BASE_EVENTS[index])
    _set(event, path, value)
    lines[index] = _dump(event)
    log = tmp_path / "events.jsonl"
    log.write_text("".join(lines))
    return log


def assert_clean(outcome: Outcome, code: int = 0) -> None:
    """The exit code, and nothing that looks like a crash."""
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome.stderr
    assert outcome.code == code, (outcome.code, outcome.stderr)


def replay_json(log: Path) -> dict[str, Any]:
    outcome = cli("replay", str(log), "--json")
    assert_clean(outcome)
    return json.loads(outcome.stdout)


def test_the_base_log_is_good() -> None:
    decoder = EventDecoder()
    assert len(decoder.feed("".join(_BASE))) == GOOD and decoder.stats.corrupt_lines == 0
    assert {e["kind"] for e in _BASE_EVENTS} >= {"header", "phase", "model", "sample", "snapshot", "warning",
                                                 "note", "estimate", "exit"}


@pytest.mark.parametrize(("kind", "path", "value"), FIELD_CASES,
                         ids=[f"{k}.{p}={str(v)[:12]}" for k, p, v in FIELD_CASES])
def test_an_event_with_a_field_of_the_wrong_type_is_skipped_and_counted(tmp_path: Path, kind: str, path: str,
                                                                         value: Any) -> None:
    log = broken_log(tmp_path, kind, path, value)
    summary = replay_json(log)
    stats = summary["log"]
    assert stats["events"] == GOOD - 1 and stats["corrupt_lines"] == 1, stats
    literal = value is not _DELETE and any(word in json.dumps(value) for word in ("NaN", "Infinity"))
    if not literal:  # (NaN and Infinity are not JSON: such a line is corrupt before its fields are looked at)  # parsed, then refused for its type
        assert stats["invalid_events"] == 1
        top = path.split(".")[0]
        assert any(name.startswith(f"{kind}.{top}") for name in stats["invalid_fields"]), stats
    for mode in MODES:
        assert_clean(cli("replay", str(log), *mode))
    report = cli("replay", str(log), "--headless").stdout
    assert "log: 1 corrupt line skipped" in report


# -- whole files that are no run log --------------------------------------------------------------
def _write(tmp_path: Path, data: bytes | str, name: str = "events.jsonl") -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


_DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
_DEEP_OBJECT = '{"a":' * 100_000 + "1" + "}" * 100_000
_DEEP_IN_EVENT = '{"v":1,"t":1.0,"kind":"note","x":' + "[" * 900 + "]" * 900 + "}"
_BIG_NUMBER = '{"v":1,"t":1.0,"kind":"sample","rss":' + "9" * 5000 + "}"


def _rng_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


#: (id, content): a file without a single valid event -> exit 2, one line, what it is.
NO_LOG_CASES: list[tuple[str, bytes | str, tuple[str, ...]]] = [
    ("binary", _rng_bytes(1, 20_000), ("not an ftwatch run log",)),
    ("binary-with-newlines", b"\n".join(_rng_bytes(i, 300) for i in range(50)), ("not an ftwatch run log",)),
    ("nul-bytes", b"\0" * 10_000, ("not an ftwatch run log",)),
    ("not-utf8", "caf\xe9 au lait\n\xff\xfe{}\n".encode("latin-1"), ("not an ftwatch run log",)),
    ("utf16", "".join(_BASE[:5]).encode("utf-16"), ("not an ftwatch run log",)),
    ("json-array-one-line", json.dumps(_BASE_EVENTS), ("not an ftwatch run log", "JSON array")),
    ("json-array-with-newline", json.dumps(_BASE_EVENTS) + "\n", ("not an ftwatch run log", "JSON array")),
    ("json-array-pretty", json.dumps(_BASE_EVENTS[:20], indent=2), ("not an ftwatch run log", "JSON array")),
    ("pretty-object", json.dumps(_BASE_EVENTS[0], indent=2), ("not an ftwatch run log",)),
    ("deep-array", _DEEP_ARRAY + "\n", ("not an ftwatch run log",)),
    ("deep-object", _DEEP_OBJECT + "\n", ("not an ftwatch run log",)),
    ("deep-no-newline", _DEEP_ARRAY, ("not an ftwatch run log",)),
    ("big-number", _BIG_NUMBER + "\n", ("not an ftwatch run log",)),
    ("nan-literals", '{"v":1,"t":NaN,"kind":"sample"}\n{"v":1,"t":Infinity,"kind":"note"}\n',
     ("not an ftwatch run log",)),
    ("all-invalid", "".join(_dump({**e, "t": "yesterday"}) for e in _BASE_EVENTS),
     ("not an ftwatch run log", "wrong type", ".t")),
    ("one-huge-line", "x" * (3 * MAX_LINE_CHARS) + "\n", ("not an ftwatch run log", "longer than 1 MiB")),
    ("one-huge-line-no-newline", "{" * (2 * MAX_LINE_CHARS), ("not an ftwatch run log", "longer than 1 MiB")),
    ("csv", "t,step,loss\n1,2,3\n", ("not an ftwatch run log",)),
    ("numbers", "1\n2\n3\n", ("not an ftwatch run log",)),
    ("strings", '"a"\n"b"\n', ("not an ftwatch run log",)),
    ("only-unknown-kinds", '{"v":1,"t":1,"kind":"hologram"}\n', ("unknown kinds", "hologram")),
    ("empty", "", ("empty",)),
    ("blank-lines", "\n \n\t\n", ("empty",)),
]


@pytest.mark.parametrize(("content", "needles"), [c[1:] for c in NO_LOG_CASES], ids=[c[0] for c in NO_LOG_CASES])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m[0])
def test_a_file_without_a_valid_event_is_one_line_exit_2(tmp_path: Path, content: bytes | str,
                                                         needles: tuple[str, ...], mode: tuple[str, ...]) -> None:
    log = _write(tmp_path, content)
    outcome = cli("replay", str(log), *mode)
    outcome.assert_one_line_error("ftwatch replay", str(log), *needles)
    assert outcome.stdout == ""


def test_a_json_array_is_not_called_a_cut_last_line(tmp_path: Path) -> None:
    outcome = cli("replay", str(_write(tmp_path, json.dumps(_BASE_EVENTS))), "--json")
    outcome.assert_one_line_error("JSON array")
    assert "cut" not in outcome.stderr


#: (id, a bad line put in the middle of the good log): replayed, the line skipped and counted.
MIXED_CASES: list[tuple[str, str]] = [
    ("binary", _rng_bytes(7, 500).decode("latin-1").replace("\n", " ").replace("\r", " ")),  # one line
    ("deep-array", _DEEP_ARRAY),
    ("deep-object", _DEEP_OBJECT),
    ("deep-inside-an-event", _DEEP_IN_EVENT),
    ("big-number", _BIG_NUMBER),
    ("nan", '{"v":1,"t":1760000000.5,"kind":"snapshot","loss":NaN}'),
    ("huge-line", '{"v":1,"t":1760000000.5,"kind":"note","message":"' + "x" * (2 * MAX_LINE_CHARS) + '"}'),
    ("array-line", "[1, 2, 3]"),
    ("trailing-garbage", _BASE[3].strip() + " trailing"),
]


@pytest.mark.parametrize("bad", [c[1] for c in MIXED_CASES], ids=[c[0] for c in MIXED_CASES])
def test_a_bad_line_among_good_events_is_skipped_and_counted(tmp_path: Path, bad: str) -> None:
    lines = list(_BASE)
    lines.insert(10, bad + "\n")
    log = _write(tmp_path, "".join(lines))
    stats = replay_json(log)["log"]
    assert stats["events"] == GOOD and stats["corrupt_lines"] == 1, stats
    for mode in MODES:
        assert_clean(cli("replay", str(log), *mode))


def test_an_over_long_line_is_never_held_whole(tmp_path: Path) -> None:
    """The decoder keeps at most one bounded line: a 20 MiB line without a newline costs no 20 MiB."""
    decoder = EventDecoder()
    chunk = "y" * (1 << 20)
    events = decoder.feed(_BASE[0])
    for _ in range(20):
        events += decoder.feed(chunk)
        assert len(decoder._partial) <= MAX_LINE_CHARS
    events += decoder.feed("tail\n" + _BASE[1])
    events += decoder.finish()
    assert len(events) == 2 and decoder.stats.long_lines == 1 and decoder.stats.corrupt_lines == 1


def test_an_over_long_last_line_is_not_a_cut_tail(tmp_path: Path) -> None:
    log = _write(tmp_path, "".join(_BASE) + "z" * (MAX_LINE_CHARS + 10))
    stats = replay_json(log)["log"]
    assert stats["long_lines"] == 1 and not stats["truncated_tail"] and stats["events"] == GOOD


# -- what is not a regular file -------------------------------------------------------------------
def _fifo(tmp_path: Path, name: str = "events.jsonl") -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m[0])
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, mode: tuple[str, ...]) -> None:
    fifo = _fifo(tmp_path)
    result: list[Outcome] = []
    worker = threading.Thread(target=lambda: result.append(cli("replay", str(fifo), *mode)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # unblock the reader so the test process can end, then fail
        with open(fifo, "w"):
            pass
        pytest.fail("replay of a FIFO blocked")
    result[0].assert_one_line_error("FIFO", "not a run log")


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_a_device_is_refused(device: str) -> None:
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    cli("replay", device, "--headless").assert_one_line_error("character device", "not a run log", device)


def test_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        cli("replay", str(path), "--json").assert_one_line_error("socket", "not a run log")
    finally:
        server.close()


def test_a_run_directory_whose_log_is_a_fifo_is_refused(tmp_path: Path) -> None:
    _fifo(tmp_path)
    cli("replay", str(tmp_path), "--csv").assert_one_line_error("FIFO")


def test_a_rank_log_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rank0").mkdir()
    (tmp_path / "rank0" / "events.jsonl").write_text("".join(_BASE))
    (tmp_path / "rank1").mkdir()
    _fifo(tmp_path / "rank1")
    cli("replay", str(tmp_path), "--json").assert_one_line_error("FIFO")


def test_a_gzip_of_garbage_is_not_a_run_log(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(_rng_bytes(3, 5000)))
    cli("replay", str(path), "--json").assert_one_line_error("not an ftwatch run log")


def test_every_kind_has_its_field_types() -> None:
    from ftwatch.runlog.event_fields import CHECKS
    from ftwatch.runlog.events import KINDS

    assert set(CHECKS) == set(KINDS)


def test_extra_fields_and_keys_are_tolerated() -> None:
    """Strict about what consumers read, tolerant of what a newer ftwatch may add."""
    events = copy.deepcopy(_BASE_EVENTS)
    for event in events:
        event["future_field"] = {"nested": [1, "two", None]}
        for value in event.values():
            if isinstance(value, dict) and value is not event.get("categories") \
                    and value is not event.get("estimate_bytes"):
                value["future_key"] = "x"
    decoder = EventDecoder()
    assert len(decoder.feed("".join(encode_event(e) for e in events))) == GOOD
    assert decoder.stats.corrupt_lines == 0


# -- escape sequences in every string ---------------------------------------------------------------
#: Field -> (crafted text, what a terminal-safe copy shows): OSC titles and clipboard (OSC 52), CSI
#: screen clears and cursor moves, C1 controls, BEL, and a reset (ESC c).
CRAFTED = {
    "name": ("run\x1b]0;pwned\x07A", "runA"),
    "model": ("\x1b[2Jmodel-B", "model-B"),
    "device": ("GPU\x9b31mC", "GPUC"),
    "note": ("\x1b]52;c;aGVsbG8=\x07note-D", "note-D"),
    "warning": ("warn\x1b[1;1H-E\x9d0;title\x9c", "warn-E"),
    "exit": ("boom\x1bc-F", "boom-F"),
    "traceback": ("tb\x07-G", "tb-G"),
}
FORBIDDEN = ("\x1b", "\x07", "\x9b", "\x9d", "\x9c")


def crafted_log(tmp_path: Path, ensure_ascii: bool) -> Path:
    """The base log with escape sequences in the header's name, model and device name, a note, a
    warning, the exit message and traceback; JSON-escaped (as json.dumps writes them) or raw UTF-8."""
    events = copy.deepcopy(_BASE_EVENTS)
    for event in events:
        kind = event["kind"]
        if kind == "header":
            event["name"], event["model"] = CRAFTED["name"][0], CRAFTED["model"][0]
            event["device"]["name"] = CRAFTED["device"][0]
        elif kind in ("note", "warning"):
            event["message"] = CRAFTED[kind][0]
        elif kind == "exit":
            event.update(status="failed", message=CRAFTED["exit"][0], traceback=CRAFTED["traceback"][0],
                         error_type="Crafted\x1b[31mError", oom=None)
    if not ensure_ascii:  # a raw ESC (or BEL) is not allowed in a JSON string: raw C1 controls are
        text = "".join(json.dumps(e, ensure_ascii=False).replace("\\u001b", "\u009b").replace("\\u0007", "\u009c")
                       + "\n" for e in events)
    else:
        text = "".join(json.dumps(e) + "\n" for e in events)
    return _write(tmp_path, text)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [*_strings(k), *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["json-escaped", "raw-utf8"])
def test_no_escape_sequence_from_a_log_reaches_the_output(tmp_path: Path, ensure_ascii: bool) -> None:
    log = crafted_log(tmp_path, ensure_ascii)
    from ftwatch.runlog.event_reader import read_events

    decoder = EventDecoder()
    events = list(read_events(log, decoder))
    assert len(events) == GOOD and decoder.stats.corrupt_lines == 0
    for text in (s for e in events for s in _strings(e)):
        assert not any(c in text for c in FORBIDDEN) and not any("\x80" <= c <= "\x9f" for c in text), repr(text)
    outputs = {mode[0]: cli("replay", str(log), *mode) for mode in MODES}
    for mode, outcome in outputs.items():
        assert_clean(outcome)
        for char in FORBIDDEN:
            assert char not in outcome.stdout + outcome.stderr, (mode, char)
    as_json = outputs["--json"].stdout
    for escaped in ("\\u001b", "\\u0007", "\\u009b", "\\u009d"):
        assert escaped not in as_json
    if ensure_ascii:  # (in the raw form, the ESC became C1 CSI: what it hides differs)
        summary = json.loads(as_json)
        assert summary["model"] == "model-B" and summary["device"] == "GPUC"
        assert summary["error"] == "boom-F" and summary["notes"][0] == "note-D"
        assert summary["warnings"][-1]["message"] == "warn-E"
        report = outputs["--headless"].stdout
        for field in ("model", "device", "exit", "warning"):
            assert CRAFTED[field][1] in report, field
        assert "runA" in outputs["--plot"].stdout
        exit_event = events[-1]
        assert exit_event["traceback"] == "tb-G" and exit_event["error_type"] == "CraftedError"


@pytest.mark.parametrize("world_size", ['"two"', "[2]", "1e400", "-3", "true", "{}"])
@pytest.mark.parametrize("mode", ["--headless", "--json", "--csv"])
def test_a_launch_record_of_the_wrong_type_is_not_trusted(tmp_path: Path, world_size: str, mode: str) -> None:
    """launch.json is a hint beside the rank logs: a world size that is not a count is dropped (the
    headers tell it) instead of reaching int() and a traceback."""
    import shutil

    run = tmp_path / "ddp"
    shutil.copytree(FIXTURES / "ddp-rank-died", run)
    (run / "launch.json").write_text('{"launcher": "torchrun", "world_size": ' + world_size + "}")
    outcome = cli("replay", str(run), mode)
    assert outcome.code == 0 and "Traceback" not in outcome.stderr, outcome.stderr
    if mode == "--json":
        assert json.loads(outcome.stdout)["world_size"] == 2  # from the ranks' own headers
