"""A tenant's counting settings, and the same compiled for the hot path.

:class:`CountingSettings` gathers what varies per tenant: the window (tenant
settings) and the tenant's own filters (analytics CountingSettings).
:func:`compile_rules` turns it into :class:`CountingRules` once (cached), which
both the batch function and the accumulator take.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from services.shared.client_ip import IpExclusions

from .filters import RequestFilter
from .user_agents import UserAgentClassifier, default_classifier
from .windows import CalendarDays, CountingWindow


@dataclass(frozen=True, slots=True)
class CountingSettings:
    """How one tenant's downloads are counted."""

    window: CountingWindow = CountingWindow.UTC_DAY
    time_zone: str = "UTC"
    """IANA name; the calendar of ``TENANT_DAY`` windows."""
    excluded_ip_ranges: tuple[str, ...] = ()
    """CIDR ranges; applied on arrival, see :meth:`~.records.ListenerRequest.from_raw`."""
    excluded_user_agents: tuple[str, ...] = ()
    """Case-insensitive substrings treated like bots."""


class CountingRules:
    """:class:`CountingSettings` compiled: filter, classifier, calendar and IP exclusions."""

    __slots__ = ("classifier", "days", "filter", "ip_exclusions", "settings")

    def __init__(
        self, settings: CountingSettings, classifier: UserAgentClassifier | None = None
    ) -> None:
        self.settings = settings
        self.classifier = classifier or default_classifier()
        self.filter = _shared_filter(self.classifier, settings.excluded_user_agents)
        self.ip_exclusions = IpExclusions(settings.excluded_ip_ranges)
        self.days: CalendarDays | None
        """The calendar of day windows; None for rolling windows."""
        if settings.window is CountingWindow.ROLLING_24H:
            self.days = None
        elif settings.window is CountingWindow.TENANT_DAY:
            self.days = CalendarDays(settings.time_zone)
        else:
            self.days = CalendarDays("UTC")

    @property
    def counting_time_zone(self) -> str:
        """For the Methodology disclosure: the day windows' zone, empty when rolling."""
        return self.days.time_zone if self.days else ""


@lru_cache(maxsize=64)
def _shared_filter(
    classifier: UserAgentClassifier, excluded_user_agents: tuple[str, ...]
) -> RequestFilter:
    # Tenants with the same User-Agent exclusions (most have none) share one
    # filter, hence one User-Agent cache, instead of one cache per tenant.
    return RequestFilter(classifier, excluded_user_agents)


@lru_cache(maxsize=1024)
def compile_rules(settings: CountingSettings) -> CountingRules:
    """The compiled rules for ``settings`` with the built-in User-Agent rules (cached)."""
    return CountingRules(settings)
