"""HTTP Range headers, the bytes a request delivered, and unions of byte intervals.

Intervals are inclusive ``(first, last)`` byte offsets, like HTTP ranges.

What a request delivered (:func:`served_interval`) is what the server sent, not
what the client asked for: the body starts at the first byte of the first
requested range (or at 0 for a full response) and is ``bytes_served`` long,
cut at the requested range's last byte. Only the first range of a
multi-range request is used (its multipart body also carries part headers, so
``bytes_served`` overstates the audio bytes); this undercounts rather than
overcounts. A suffix range (``bytes=-500``) can only be placed when the file
size is known.

A listener's bytes delivered for an episode within a window are the union of
those intervals: :class:`IntervalSet` keeps it incrementally, and
:func:`merge_intervals` computes it in one go (sort and merge).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

# Byte offsets beyond 10^18 are not files; the cap also keeps int() cheap.
_MAX_DIGITS = 18
_PROBE_RANGE = "bytes=0-1"


class RangeError(ValueError):
    """A Range header that is not a valid ``bytes`` range set."""


@dataclass(frozen=True, slots=True)
class ByteRangeSpec:
    """One range of a Range header.

    ``bytes=500-999`` is ``first=500, last=999``; ``bytes=500-`` is
    ``first=500, last=None``; the suffix ``bytes=-500`` is ``first=None,
    suffix_length=500``.
    """

    first: int | None
    last: int | None = None
    suffix_length: int | None = None

    def start_in(self, size_bytes: int) -> int | None:
        """The first byte this range selects in a file of ``size_bytes`` (0: unknown)."""
        if self.first is not None:
            return self.first
        if size_bytes <= 0 or self.suffix_length is None:
            return None
        return max(0, size_bytes - self.suffix_length)


def _offset(text: str, header: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_DIGITS:
        raise RangeError(f"not a byte offset {text!r} in Range {header[:80]!r}")
    return int(text)


def parse_range(header: str) -> tuple[ByteRangeSpec, ...]:
    """Parses a Range header (RFC 9110 section 14.1.2) into its ranges, in order.

    Raises :class:`RangeError` for anything else: another unit, an empty set,
    ``last < first``, signs or non-ASCII digits.
    """
    unit, equals, ranges = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        raise RangeError(f"not a bytes range: {header[:80]!r}")
    specs: list[ByteRangeSpec] = []
    for part in ranges.split(","):
        text = part.strip()
        if not text:
            continue
        first_text, dash, last_text = text.partition("-")
        if not dash:
            raise RangeError(f"range without '-' in {header[:80]!r}")
        first_text, last_text = first_text.strip(), last_text.strip()
        if first_text:
            first = _offset(first_text, header)
            last = _offset(last_text, header) if last_text else None
            if last is not None and last < first:
                raise RangeError(f"range ends before it starts in {header[:80]!r}")
            specs.append(ByteRangeSpec(first, last))
        elif last_text:
            specs.append(ByteRangeSpec(None, None, _offset(last_text, header)))
        else:
            raise RangeError(f"empty range '-' in {header[:80]!r}")
    if not specs:
        raise RangeError(f"no range in {header[:80]!r}")
    return tuple(specs)


@lru_cache(maxsize=8192)
def first_range(header: str) -> ByteRangeSpec:
    """The first range of a Range header (cached); raises :class:`RangeError`."""
    return parse_range(header)[0]


def is_probe_range(header: str) -> bool:
    """True for exactly ``bytes=0-1`` (spacing and unit case aside): a player's probe."""
    if header == _PROBE_RANGE:
        return True
    # Almost every other header fails the cheap test of ending in "1".
    if len(header) > 32 or not header.rstrip().endswith("1"):
        return False
    return "".join(header.split()).lower() == _PROBE_RANGE


def served_interval(
    range_header: str, status: int, bytes_served: int, size_bytes: int = 0
) -> tuple[int, int] | None:
    """The byte interval a request delivered, or None when it delivered nothing placeable.

    A 200 response (or a request without Range) delivered ``[0, bytes_served-1]``;
    a 206 delivered ``bytes_served`` bytes from the first range's start, cut at
    that range's last byte. ``size_bytes`` (0: unknown) places suffix ranges.
    Raises :class:`RangeError` for an invalid Range header on a 206.
    """
    if bytes_served <= 0:
        return None
    if status != 206 or not range_header:
        return 0, bytes_served - 1
    spec = first_range(range_header)
    first = spec.start_in(size_bytes)
    if first is None:
        return None
    last = first + bytes_served - 1
    if spec.last is not None and spec.last < last:
        last = spec.last
    return first, last


def merge_intervals(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-adjacent intervals covering exactly the same bytes."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(intervals):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def union_size(intervals: Iterable[tuple[int, int]]) -> int:
    """Number of distinct bytes covered by the intervals."""
    return sum(last - first + 1 for first, last in merge_intervals(intervals))


class IntervalSet:
    """A growing union of byte intervals with its size kept up to date.

    Stored as two sorted tuples (starts, ends) of disjoint, non-adjacent
    intervals: adding is a pair of bisections and a splice. Tuples rather than
    lists because a listener's union has a handful of intervals, and tuples of
    ints cost the garbage collector nothing once it has seen them, which
    matters with millions of open windows.
    """

    __slots__ = ("_ends", "_starts", "total")

    def __init__(self) -> None:
        self._starts: tuple[int, ...] = ()
        self._ends: tuple[int, ...] = ()
        self.total = 0
        """Number of distinct bytes covered."""

    @classmethod
    def of(cls, intervals: Iterable[tuple[int, int]]) -> IntervalSet:
        """The union of ``intervals``, built by sort and merge."""
        result = cls()
        merged = merge_intervals(intervals)
        result._starts = tuple(first for first, _ in merged)
        result._ends = tuple(last for _, last in merged)
        result.total = sum(last - first + 1 for first, last in merged)
        return result

    def add(self, first: int, last: int) -> None:
        """Adds the bytes ``first..last`` (inclusive)."""
        starts, ends = self._starts, self._ends
        if not starts:
            self._starts, self._ends, self.total = (first,), (last,), last - first + 1
            return
        if first > ends[-1] + 1:
            self._starts = (*starts, first)
            self._ends = (*ends, last)
            self.total += last - first + 1
            return
        # Intervals i..j-1 overlap or touch [first, last]; they become one.
        i = bisect_left(ends, first - 1)
        j = bisect_right(starts, last + 1)
        if i == j:
            self._starts = (*starts[:i], first, *starts[i:])
            self._ends = (*ends[:i], last, *ends[i:])
            self.total += last - first + 1
            return
        new_first = min(first, starts[i])
        new_last = max(last, ends[j - 1])
        removed = 0
        for k in range(i, j):
            removed += ends[k] - starts[k] + 1
        self._starts = (*starts[:i], new_first, *starts[j:])
        self._ends = (*ends[:i], new_last, *ends[j:])
        self.total += new_last - new_first + 1 - removed

    def covers(self, first: int, last: int) -> bool:
        """True when every byte of ``first..last`` is in the union."""
        i = bisect_right(self._starts, first) - 1
        return i >= 0 and self._ends[i] >= last

    def intervals(self) -> list[tuple[int, int]]:
        """The union as sorted, disjoint, non-adjacent intervals."""
        return list(zip(self._starts, self._ends, strict=True))

    def __repr__(self) -> str:
        return f"IntervalSet({self.intervals()!r})"
