"""The reader reads a log the same with msgspec (the fast parser, when installed) as with the standard
``json`` alone: same events, same counts of what it skipped, for the lines where the two parsers
differ (a lone surrogate escape, ``1e400``, trailing text, huge integers) and for ordinary ones."""

from __future__ import annotations

import json

import pytest

from ftwatch.runlog import event_reader
from ftwatch.runlog.event_reader import EventDecoder
from ftwatch.runlog.events import encode

LINES = [
    encode("phase", {"name": "training"}, t=1),
    # A lone surrogate, as json.dumps writes a file name read with surrogateescape: msgspec refuses it.
    '{"v":1,"t":2,"kind":"note","code":"path","message":"/data/\\udcff.jsonl"}\n',
    '{"v":1,"t":3,"kind":"snapshot","loss":1e400}\n',  # json: inf (an invalid field); msgspec refuses it
    '{"v":1,"t":4,"kind":"note","code":"x","message":"y"} trailing\n',  # corrupt for both
    '{"v":1,"t":5,"kind":"sample","rss":123456789012345678901234567890}\n',  # exact int: out of int64
    '{"v":1,"t":6,"kind":"sample","cpu_percent":123456789012345678901234567890}\n',  # a finite number: read
    '{"v":1,"t":7,"kind":"note","code":"dup","code":"last"}\n',
    '["not", "an", "object"]\n',
    '{"v":1,"t":8,"kind":"sample","rss":' + "7" * 5000 + "}\n",  # past Python's int digits limit: corrupt
    encode("exit", {"status": "finished", "step": 3}, t=9),
]


def read(lines: list[str]) -> tuple[list[dict], tuple]:
    decoder = EventDecoder()
    events = decoder.feed("".join(lines))
    s = decoder.stats
    return events, (s.events, s.corrupt_lines, s.invalid_events, sorted(s.invalid_fields), s.unknown_kinds)


def test_msgspec_is_used_when_installed():
    msgspec = pytest.importorskip("msgspec")
    assert event_reader._fast_decode is not None
    assert type(event_reader._fast_decode.__self__) is msgspec.json.Decoder


def test_the_fast_parser_and_json_alone_read_a_log_the_same(monkeypatch: pytest.MonkeyPatch):
    fast = read(LINES)
    monkeypatch.setattr(event_reader, "_fast_decode", None)
    plain = read(LINES)
    assert fast == plain
    events, counts = plain
    # Counted by hand from LINES: 5 events read (phase, the surrogate note, the finite cpu_percent, the
    # duplicate-key note, exit); 5 lines skipped, 2 of them for their fields (loss inf, rss past int64).
    assert [e["kind"] for e in events] == ["phase", "note", "sample", "note", "exit"]
    assert events[1]["message"].endswith(".jsonl") and events[3]["code"] == "last"
    assert counts == (5, 5, 2, ["sample.rss", "snapshot.loss"], 0)


def test_ordinary_events_come_out_equal_to_json_loads():
    lines = [encode("sample", {"phase": "training", "rss": 3 << 30, "cpu_percent": 97.5,
                               "cuda": {"allocated": 1 << 34, "reserved": 1 << 35},
                               "nvml": {"others": [[4242, 1 << 30]], "util": 97}}, t=1.25),
             encode("snapshot", {"step": 7, "loss": 1.0625, "categories": {"weights": 1 << 33, "lora": None}}, t=2)]
    events, _ = read(lines)
    assert events == [json.loads(line) for line in lines]
