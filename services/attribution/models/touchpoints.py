"""Touchpoints (exposures of a household) and the paths the data-driven models learn from.

A conversion's touchpoints are the household's exposures at or before the conversion and
no older than the attribution window (both bounds inclusive), ordered by time and then
by exposure id so that ties are deterministic whatever order the rows arrived in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter


@dataclass(frozen=True, slots=True)
class Touchpoint:
    exposure_id: str
    time: float
    channel: str


@dataclass(frozen=True, slots=True)
class Path:
    """The channels (line item ids) of one journey's in-window touches, in touch order.

    `count` lets the caller hand over identical journeys once; fitting aggregates
    identical paths itself as well, so it is an optimisation, never a requirement.
    """

    channels: tuple[str, ...]
    converted: bool
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a path is counted at least once, not {self.count}")

    @classmethod
    def of(cls, touches: Iterable[Touchpoint], *, converted: bool, count: int = 1) -> Path:
        return cls(tuple(t.channel for t in ordered(touches)), converted, count)


# attrgetter keeps the sort key in C: ordering is on every conversion's path.
touch_order = attrgetter("time", "exposure_id")


def ordered(touches: Iterable[Touchpoint]) -> list[Touchpoint]:
    return sorted(touches, key=touch_order)


def in_window(
    touches: Iterable[Touchpoint], conversion_time: float, window_seconds: float
) -> list[Touchpoint]:
    if not math.isfinite(conversion_time):
        raise ValueError("the conversion time must be finite")
    if not (math.isfinite(window_seconds) and window_seconds >= 0):
        raise ValueError("the attribution window must be finite and not negative")
    earliest = conversion_time - window_seconds
    return ordered([t for t in touches if earliest <= t.time <= conversion_time])


def aggregate(paths: Iterable[Path]) -> dict[tuple[tuple[str, ...], bool], int]:
    """Identical journeys counted once: (channels, converted) -> how many."""
    counts: dict[tuple[tuple[str, ...], bool], int] = {}
    for path in paths:
        key = (path.channels, path.converted)
        counts[key] = counts.get(key, 0) + path.count
    return counts
