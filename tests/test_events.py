"""The event codec and the tolerant reader: nothing is lost silently, nothing crashes."""

import gzip
import json

import pytest

from ftwatch.events import (
    SCHEMA_VERSION,
    EventDecoder,
    EventWriter,
    SchemaVersionError,
    encode,
    read_events,
    resolve_log_path,
)


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
