"""The event codec and the tolerant reader: nothing is lost silently, nothing crashes."""

import gzip
import json

import pytest

from ftwatch.runlog.event_reader import EventDecoder, SchemaVersionError, read_events, resolve_log_path
from ftwatch.runlog.event_writer import EventWriter
from ftwatch.runlog.events import SCHEMA_VERSION, encode


def test_writer_appends_flushed_lines_private_to_the_owner(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path)
    writer.emit("phase", name="training")
    # readable before close: each event is flushed as it is written
    assert json.loads(path.read_text().splitlines()[0])["name"] == "training"
    writer.close()
    writer.emit("phase", name="late")  # ignored after close, no exception
    assert len(path.read_text().splitlines()) == 1
    assert path.stat().st_mode & 0o777 == 0o600


def test_encode_has_version_time_and_kind():
    event = json.loads(encode("note", {"code": "x", "message": "y"}, t=12.5))
    assert event == {"v": SCHEMA_VERSION, "t": 12.5, "kind": "note", "code": "x", "message": "y"}


def test_decoder_keeps_partial_lines_until_complete():
    decoder = EventDecoder()
    line = encode("phase", {"name": "training"}, t=1.0)
    assert decoder.feed(line[:10]) == []
    events = decoder.feed(line[10:])
    assert [e["name"] for e in events] == ["training"]


def test_corrupt_and_unknown_lines_are_skipped_and_counted():
    decoder = EventDecoder()
    text = (encode("phase", {"name": "a"}, t=1) + "not json\n" + "[1, 2]\n" + '{"kind": 3}\n'
            + '{"v":1,"t":2,"kind":"hologram"}\n' + '{"v":1,"kind":"note"}\n' + encode("phase", {"name": "b"}, t=3))
    events = decoder.feed(text)
    assert [e["name"] for e in events] == ["a", "b"]
    assert decoder.stats.corrupt_lines == 4
    assert decoder.stats.unknown_kinds == 1
    assert decoder.stats.unknown_kind_names == {"hologram"}


def test_cut_last_line_is_a_truncated_tail_not_corruption():
    decoder = EventDecoder()
    decoder.feed(encode("phase", {"name": "a"}, t=1) + '{"v":1,"t":2,"kind":"sam')
    assert decoder.finish() == []
    assert decoder.stats.truncated_tail and decoder.stats.corrupt_lines == 0


def test_other_schema_version_is_refused_clearly():
    with pytest.raises(SchemaVersionError, match="v99"):
        EventDecoder().feed('{"v":99,"t":1,"kind":"header"}\n')


def test_read_events_from_directory_and_gzip(tmp_path):
    lines = encode("phase", {"name": "a"}, t=1) + encode("phase", {"name": "b"}, t=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "events.jsonl").write_text(lines)
    assert [e["name"] for e in read_events(tmp_path / "run")] == ["a", "b"]
    gz = tmp_path / "events.jsonl.gz"
    with gzip.open(gz, "wt") as handle:
        handle.write(lines)
    assert [e["name"] for e in read_events(gz)] == ["a", "b"]


def test_resolve_log_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_log_path(tmp_path / "absent.jsonl")
    with pytest.raises(FileNotFoundError, match="without an events.jsonl"):
        resolve_log_path(tmp_path)


# -- what the reader refuses (issue 10) -----------------------------------------------------------
def test_nan_infinity_deep_nesting_and_huge_numbers_are_corrupt_lines_not_exceptions():
    decoder = EventDecoder()
    good = encode("phase", {"name": "a"}, t=1)
    bad = ['{"v":1,"t":NaN,"kind":"note"}', '{"v":1,"t":1,"kind":"snapshot","loss":Infinity}',
           "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000,
           '{"v":1,"t":1,"kind":"sample","rss":' + "7" * 5000 + "}"]
    events = decoder.feed(good + "\n".join(bad) + "\n" + good)
    assert [e["name"] for e in events] == ["a", "a"]
    assert decoder.stats.corrupt_lines == len(bad) and decoder.stats.invalid_events == 0


@pytest.mark.parametrize(("fields", "where"), [
    ({"kind": "snapshot", "loss": "low"}, "snapshot.loss"), ({"kind": "snapshot", "categories": [1]},
                                                              "snapshot.categories"),
    ({"kind": "sample", "rss": 10**400}, "sample.rss"), ({"kind": "header", "device": "cuda"}, "header.device"),
    ({"kind": "sample", "cuda": {"reserved": "1"}}, "sample.cuda.reserved"), ({"kind": "phase"}, "phase.name"),
    ({"kind": "exit", "step": 3}, "exit.status"), ({"kind": "note", "t": "now"}, "note.t"),
    ({"kind": "snapshot", "step": True}, "snapshot.step"), ({"kind": "header", "pid": -1}, "header.pid"),
])
def test_an_event_whose_fields_do_not_fit_is_skipped_and_counted_with_the_field(fields, where):
    decoder = EventDecoder()
    line = json.dumps({"v": 1, "t": 5.0, **fields})
    assert decoder.feed(line + "\n") == []
    assert decoder.stats.corrupt_lines == 1 and decoder.stats.invalid_events == 1
    assert decoder.stats.invalid_fields == {where}


def test_strings_with_control_characters_are_made_safe_and_others_left_alone():
    decoder = EventDecoder()
    crafted = encode("note", {"code": "x\u009b2J", "message": "a\x1b]0;title\x07b\rc\u007f", "n": ["\x1b[31mred"]}, t=1)
    plain = encode("note", {"code": "ok", "message": "multi\nline\ttab é"}, t=2)
    first, second = decoder.feed(crafted + plain)
    assert first == {"v": 1, "t": 1, "kind": "note", "code": "x", "message": "c", "n": ["red"]}
    assert second == json.loads(plain)


def test_a_fifo_is_refused_before_anything_opens_it(tmp_path):
    import os

    from ftwatch.runlog.event_reader import NotALogError

    fifo = tmp_path / "events.jsonl"
    os.mkfifo(fifo)
    for target in (fifo, tmp_path):
        with pytest.raises(NotALogError, match="FIFO"):
            resolve_log_path(target)
    assert issubclass(NotALogError, FileNotFoundError)  # every caller already says it in one line


def test_read_stats_add_up():
    from ftwatch.runlog.event_reader import ReadStats

    total = ReadStats(events=1, corrupt_lines=2, invalid_events=1, invalid_fields={"a.b"})
    total.add(ReadStats(events=3, corrupt_lines=1, long_lines=1, json_array=True, unknown_kind_names={"x"}))
    assert (total.events, total.corrupt_lines, total.invalid_events, total.long_lines) == (4, 3, 1, 1)
    assert total.json_array and total.invalid_fields == {"a.b"} and total.unknown_kind_names == {"x"}
