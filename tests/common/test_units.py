"""Sizes as users write them, and as people read them."""

import pytest

from ftwatch.common.units import format_bytes, format_duration, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("20GiB", 20 * 1024**3), ("22.3GB", 22_300_000_000), ("512 MiB", 512 * 1024**2), ("1.5k", 1500),
    ("100", 100), (4096, 4096), ("0.5 TiB", 512 * 1024**3), (".5GB", 500_000_000),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "12 parsecs", "", "-3GB", True, -1])
def test_parse_size_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_format_bytes():
    assert format_bytes(None) == "n/a"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(25 * 1024**3) == "25.0 GiB"
    assert format_bytes(-2 * 1024**2) == "-2.0 MiB"


def test_format_duration():
    assert format_duration(12.34) == "12.3s"
    assert format_duration(185) == "3m05s"
    assert format_duration(3720) == "1h02m"
    assert format_duration(None) == "n/a"


@pytest.mark.parametrize(("bad", "words"), [
    ("inf", "finite"), ("nan", "finite"), ("-inf", "finite"), (float("inf"), "finite"), (float("nan"), "finite"),
    ("9" * 400, "8 EiB"), ("9" * 400 + "GiB", "8 EiB"), (10**30, "8 EiB"), (1e300, "8 EiB"), ("8EiB", "unit"),
    ("-5GiB", "positive"), ("-0.5", "positive"), (-1, "positive"), ("16 EB", "unit"),
])
def test_parse_size_refuses_what_no_size_is_in_one_clear_message(bad, words):
    with pytest.raises(ValueError, match=words) as info:
        parse_size(bad)
    assert len(str(info.value)) < 120  # a 400-digit figure is not printed whole


def test_parse_size_is_exact_and_bounded():
    # no float rounding: a double cannot hold this figure to the byte
    assert parse_size("8589934591.999999999 GiB") == 8589934591 * 2**30 + (999999999 * 2**30) // 10**9
    assert parse_size(str((1 << 63) - 1)) == (1 << 63) - 1
    with pytest.raises(ValueError, match="8 EiB"):
        parse_size(str(1 << 63))
    assert parse_size("0") == 0 and parse_size("-0") == 0
    with pytest.raises(ValueError, match="positive"):
        parse_size("0", positive=True)


def test_a_size_a_user_types_needs_a_unit():
    with pytest.raises(ValueError, match='needs a unit: "24GiB"'):
        parse_size("24", unit_required=True)
    with pytest.raises(ValueError, match="needs a unit"):
        parse_size(" 1.5 ", unit_required=True)
    assert parse_size("24B", unit_required=True) == 24
    assert parse_size("24 GiB", unit_required=True) == 24 * 1024**3
    assert parse_size("24") == 24  # the log's and the parsers' own figures stay byte counts
