"""Range headers, the interval a request delivered, and unions of intervals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.analytics.counting import (
    ByteRangeSpec,
    IntervalSet,
    RangeError,
    is_probe_range,
    merge_intervals,
    parse_range,
    served_interval,
    union_size,
)


def test_parse_range_closed_open_and_suffix() -> None:
    assert parse_range("bytes=0-499") == (ByteRangeSpec(0, 499),)
    assert parse_range("bytes=9500-") == (ByteRangeSpec(9500, None),)
    assert parse_range("bytes=-500") == (ByteRangeSpec(None, None, 500),)


def test_parse_range_multiple_ranges_in_order() -> None:
    assert parse_range("Bytes = 0-99, 200-299 ,-50") == (
        ByteRangeSpec(0, 99),
        ByteRangeSpec(200, 299),
        ByteRangeSpec(None, None, 50),
    )


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "items=0-1",
        "bytes=",
        "bytes=,",
        "bytes=-",
        "bytes=5-1",
        "bytes=a-b",
        "bytes=+1-2",
        "bytes=0x10-",
        "bytes=\u0661-\u0662",
        "bytes=1-2-3",
        "bytes=1000000000000000000000-",
    ],
)
def test_parse_range_rejects_malformed_headers(header: str) -> None:
    with pytest.raises(RangeError):
        parse_range(header)


def test_probe_range_is_exactly_bytes_0_1() -> None:
    assert is_probe_range("bytes=0-1")
    assert is_probe_range("Bytes = 0-1")
    assert not is_probe_range("bytes=0-2")
    assert not is_probe_range("bytes=0-1,5-6")
    assert not is_probe_range("bytes=0-")
    assert not is_probe_range("")


def test_served_interval_of_a_full_get_is_what_was_sent() -> None:
    assert served_interval("", 200, 1000) == (0, 999)


def test_served_interval_of_a_200_ignoring_the_range_starts_at_zero() -> None:
    assert served_interval("bytes=500-", 200, 1000) == (0, 999)


def test_served_interval_of_a_range_request_starts_at_the_range() -> None:
    assert served_interval("bytes=500-", 206, 1000) == (500, 1499)
    assert served_interval("bytes=500-999", 206, 500) == (500, 999)


def test_served_interval_counts_bytes_served_not_bytes_requested() -> None:
    assert served_interval("bytes=500-", 206, 10) == (500, 509)
    assert served_interval("bytes=0-999999", 206, 4096) == (0, 4095)


def test_served_interval_uses_only_the_first_of_several_ranges() -> None:
    # The multipart body counts part headers too; they never extend the range.
    assert served_interval("bytes=0-99,200-299", 206, 350) == (0, 99)


def test_served_interval_places_suffix_ranges_only_with_a_known_size() -> None:
    assert served_interval("bytes=-500", 206, 500, size_bytes=10_000) == (9500, 9999)
    assert served_interval("bytes=-50000", 206, 10_000, size_bytes=10_000) == (0, 9999)
    assert served_interval("bytes=-500", 206, 500) is None


def test_served_interval_of_nothing_sent_is_none() -> None:
    assert served_interval("", 200, 0) is None
    assert served_interval("bytes=0-", 206, 0) is None


def test_union_of_inclusive_intervals() -> None:
    assert merge_intervals([(10, 19), (0, 4), (5, 9), (30, 40), (35, 36)]) == [(0, 19), (30, 40)]
    assert union_size([(0, 9), (5, 14), (20, 20)]) == 16
    assert union_size([]) == 0


def test_interval_set_merges_overlapping_and_adjacent_intervals() -> None:
    union = IntervalSet()
    for first, last in [(100, 199), (0, 49), (50, 99), (300, 399), (150, 350), (1000, 1000)]:
        union.add(first, last)
    assert union.intervals() == [(0, 399), (1000, 1000)]
    assert union.total == 401
    assert union.covers(0, 399)
    assert union.covers(1000, 1000)
    assert not union.covers(399, 400)
    assert not union.covers(-1, 0)


intervals = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=25,
)


@given(intervals, st.integers(0, 340), st.integers(0, 20))
def test_interval_set_matches_a_set_of_bytes(
    added: list[tuple[int, int]], probe: int, width: int
) -> None:
    union = IntervalSet()
    for first, last in added:
        union.add(first, last)
    covered = {b for first, last in added for b in range(first, last + 1)}
    assert union.total == len(covered) == union_size(added)
    assert union.intervals() == merge_intervals(added) == IntervalSet.of(added).intervals()
    assert union.covers(probe, probe + width) == all(
        b in covered for b in range(probe, probe + width + 1)
    )


@given(st.integers(0, 10**12), st.one_of(st.none(), st.integers(0, 10**12)))
def test_parse_range_round_trips(first: int, length: int | None) -> None:
    last = None if length is None else first + length
    header = f"bytes={first}-{'' if last is None else last}"
    assert parse_range(header) == (ByteRangeSpec(first, last),)
