"""The prefix methodology: which prefix requests count.

A redirect serves no bytes, so the IAB byte threshold cannot apply. A prefix request
counts, as OP3 counts, when the standard filters pass it (not HEAD, not the bytes=0-1
probe, a User-Agent that is neither empty nor a bot nor excluded) and it is the
listener's first for the media file in the UTC day; its redirect stands in for the
file's 200. Figures counted this way are prefix downloads, never byte-verified ones.
"""

from __future__ import annotations

from services.analytics.counting.filters import FilterReason, RequestFilter
from services.analytics.counting.records import ListenerRequest
from services.analytics.prefix.entries import PrefixHit

REDIRECT_STATUS = 302
DAY_US = 86_400_000_000


def prefix_filter_reason(hit: PrefixHit, request_filter: RequestFilter) -> FilterReason | None:
    """Why `hit` cannot count, or None when it can (if first in its window)."""
    if hit.status != REDIRECT_STATUS:
        return FilterReason.STATUS_NOT_COUNTED
    request = ListenerRequest(
        request_id=hit.request_id,
        time_us=hit.time_us,
        episode_id="",
        listener_id=b"",
        household_id=b"",
        user_agent=hit.user_agent,
        method=hit.method,
        # The redirect stands in for the file; a range is read as on a 200, so only
        # the bytes=0-1 probe is refused.
        status=200,
        range_header=hit.range_header,
    )
    return request_filter.reason(request)


def window_day(time_us: int) -> int:
    """The UTC day (days since the epoch) a request counts in."""
    return time_us // DAY_US
