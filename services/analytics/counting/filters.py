"""Which requests may count, and why the others do not (ARCHITECTURE.md section 8, rule 1).

:meth:`RequestFilter.reason` returns ``None`` for a countable request, else the
first :class:`FilterReason` that applies, checked in this order:

1. the request itself: method (HEAD, then anything but GET), status (only 200
   and 206), the ``bytes=0-1`` probe, a Range header that cannot be read on a
   206;
2. the User-Agent: empty (or ``-``, the log placeholder for none), Apple
   Watch, bot by the OPAWG lists (:mod:`.user_agents`);
3. the tenant's own lists: excluded User-Agent substrings, then excluded IP
   ranges. Tenant rules come last so that the standard reasons report the same
   way for every tenant.

User-Agent verdicts are cached per string. :func:`flag_implausible_volume`
is a separate, advisory check over counted downloads: it flags, it never
removes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from .ranges import RangeError, first_range, is_probe_range
from .records import Download, ListenerRequest
from .user_agents import UserAgentClassifier, default_classifier
from .windows import DAY_US

# Distinct listeners (User-Agents) per household, episode and UTC day beyond
# which the volume is flagged: more than a household, less than a big NAT's
# worth of identical app versions (which collapse into one listener anyway).
DEFAULT_VOLUME_LIMIT = 20
_NO_USER_AGENT = frozenset({"", "-"})


class FilterReason(StrEnum):
    """Why a request was not counted; stable values for reports and dashboards."""

    HEAD_REQUEST = "head_request"
    METHOD_NOT_GET = "method_not_get"
    STATUS_NOT_COUNTED = "status_not_counted"
    PROBE_RANGE = "probe_range"
    MALFORMED_RANGE = "malformed_range"
    EMPTY_USER_AGENT = "empty_user_agent"
    APPLE_WATCH = "apple_watch"
    BOT = "bot"
    EXCLUDED_USER_AGENT = "excluded_user_agent"
    EXCLUDED_IP = "excluded_ip"


def is_apple_watch(user_agent: str) -> bool:
    """Apple Watch downloads, which IAB excludes: ``atc/…watchOS`` or ``(null)/(null) watchOS``."""
    return (
        user_agent.startswith("atc/") and "watchOS" in user_agent
    ) or "(null)/(null) watchOS" in user_agent


class RequestFilter:
    """The filters for one tenant: built-in rules plus its excluded User-Agent substrings."""

    def __init__(
        self,
        classifier: UserAgentClassifier | None = None,
        excluded_user_agents: Iterable[str] = (),
        cache_size: int = 65_536,
    ) -> None:
        self.classifier = classifier or default_classifier()
        self.excluded_user_agents = tuple(
            s.lower() for s in (text.strip() for text in excluded_user_agents) if s
        )
        self.user_agent_reason = lru_cache(maxsize=cache_size)(self._user_agent_reason)
        """The reason a User-Agent alone excludes a request, or None (cached)."""

    def reason(self, request: ListenerRequest) -> FilterReason | None:
        """Why ``request`` cannot count, or None when it can."""
        method = request.method
        if method != "GET":
            upper = method.upper()
            if upper == "HEAD":
                return FilterReason.HEAD_REQUEST
            if upper != "GET":
                return FilterReason.METHOD_NOT_GET
        status = request.status
        if status != 200 and status != 206:
            return FilterReason.STATUS_NOT_COUNTED
        range_header = request.range_header
        if range_header:
            by_range = _range_reason(range_header, status == 206)
            if by_range is not None:
                return by_range
        by_user_agent = self.user_agent_reason(request.user_agent)
        if by_user_agent is not None:
            return by_user_agent
        if request.ip_excluded:
            return FilterReason.EXCLUDED_IP
        return None

    def _user_agent_reason(self, user_agent: str) -> FilterReason | None:
        if user_agent.strip() in _NO_USER_AGENT:
            return FilterReason.EMPTY_USER_AGENT
        if is_apple_watch(user_agent):
            return FilterReason.APPLE_WATCH
        if self.classifier.classify(user_agent).bot:
            return FilterReason.BOT
        if self.excluded_user_agents:
            lowered = user_agent.lower()
            if any(text in lowered for text in self.excluded_user_agents):
                return FilterReason.EXCLUDED_USER_AGENT
        return None


@lru_cache(maxsize=8192)
def _range_reason(range_header: str, partial: bool) -> FilterReason | None:
    # Cached: players repeat the same few headers (probes, "bytes=0-", fixed chunks).
    if is_probe_range(range_header):
        return FilterReason.PROBE_RANGE
    if partial:
        try:
            first_range(range_header)
        except RangeError:
            return FilterReason.MALFORMED_RANGE
    return None


@dataclass(frozen=True, slots=True)
class VolumeFlag:
    """A household with implausibly many listeners downloading one episode in one UTC day."""

    household_id: bytes
    episode_id: str
    day_start_us: int
    downloads: int


def flag_implausible_volume(
    downloads: Iterable[Download], limit: int = DEFAULT_VOLUME_LIMIT
) -> list[VolumeFlag]:
    """Households with more than ``limit`` downloads of one episode in one UTC day.

    Grouped by the UTC day of the download's time rather than by counting
    window, because rolling windows are per listener and never line up. The
    flags are for review and for tenants' exclusion lists; counts are unchanged.
    """
    groups = Counter(
        (d.household_id, d.episode_id, d.time_us - d.time_us % DAY_US) for d in downloads
    )
    flags = [VolumeFlag(h, e, day, n) for (h, e, day), n in groups.items() if n > limit]
    flags.sort(key=lambda f: (f.day_start_us, f.episode_id, f.household_id))
    return flags
