"""Unique listeners per day, ISO week or month (ARCHITECTURE.md section 8, rule 6).

A listener is a listener id (normalised IP + User-Agent, hashed per tenant).
A listener belongs to a period when one of its downloads' times falls in it,
periods being calendar days, ISO weeks (Monday to Sunday) or calendar months
in a stated time zone. Listeners are not additive: a week's listeners are not
the sum of its days'.

Exact sets (:func:`listeners_by_period`) are for tests and the rebuild; the
dashboards use HyperLogLog sketches whose members are :func:`hll_member`:
the 16 raw listener-id bytes. They are HMAC output, uniformly distributed, so
they suit any HLL (Redis PFADD, DataSketches) as they are, and the same
listener is the same member in every sketch, which is what lets sketches of
days merge into weeks and months.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from datetime import date, timedelta
from enum import StrEnum
from typing import TypeVar
from zoneinfo import ZoneInfo

from .records import Download
from .windows import from_us

K = TypeVar("K", bound=Hashable)


class Period(StrEnum):
    """A reporting period for unique listeners."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"


def period_start(time_us: int, period: Period, time_zone: str = "UTC") -> date:
    """The first local date of the period containing ``time_us`` in ``time_zone``."""
    local = from_us(time_us).astimezone(ZoneInfo(time_zone)).date()
    if period is Period.DAY:
        return local
    if period is Period.WEEK:
        return local - timedelta(days=local.weekday())
    return local.replace(day=1)


def hll_member(listener_id: bytes) -> bytes:
    """The HyperLogLog member for a listener: its 16-byte id, unchanged."""
    if len(listener_id) != 16:
        raise ValueError("a listener id is 16 bytes")
    return listener_id


def listeners_by_period(
    downloads: Iterable[Download],
    period: Period,
    time_zone: str = "UTC",
    group: Callable[[Download], K] | None = None,
) -> dict[tuple[date, K | None], set[bytes]]:
    """Unique listener ids per (period start, group), e.g. ``group=lambda d: d.episode_id``.

    Without ``group`` every key's second part is None (the whole tenant).
    """
    result: dict[tuple[date, K | None], set[bytes]] = {}
    for download in downloads:
        key = (
            period_start(download.time_us, period, time_zone),
            group(download) if group else None,
        )
        result.setdefault(key, set()).add(download.listener_id)
    return result
