"""Sizes as users write them, and as people read them."""

import pytest

from ftwatch.units import format_bytes, format_duration, parse_size


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
