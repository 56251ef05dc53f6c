"""IANA time zone names, checked the same way wherever a caller names one."""

from __future__ import annotations

import functools
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

# Files in the zone database that are not zones: the host's own zone (which differs
# between machines), zic's default rules, and the "zone unknown" placeholder.
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
# Names whose days are UTC days.
UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Zulu"})


@functools.cache
def _names() -> frozenset[str]:
    return frozenset(available_timezones()) - _NOT_ZONES


def time_zone(name: str) -> ZoneInfo | None:
    """The zone of an IANA name, None when there is no such zone."""
    # Membership first: only real names reach the cache below, so callers cannot grow it.
    if name not in _names():
        return None
    return _load(name)


@functools.cache
def _load(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def is_time_zone(name: str) -> bool:
    return time_zone(name) is not None
