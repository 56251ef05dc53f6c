"""IAB-grade download counting: the pure domain core of the analytics service.

No gRPC, SQL or Redis here: plain records in, plain records out, fast enough
for the ingestion hot path. ARCHITECTURE.md section 8 is the specification;
every module's docstring states the choices it makes where the IAB Tech Lab
Podcast Measurement guidelines leave room.

Typical use on ingestion::

    rules = compile_rules(CountingSettings(window=CountingWindow.UTC_DAY))
    hasher = IpHasher(platform_secret, tenant_id)
    request = ListenerRequest.from_raw(
        request_id=..., time_us=..., episode_id=..., client_ip=..., user_agent=...,
        hasher=hasher, exclusions=rules.ip_exclusions, status=206,
        range_header="bytes=0-", bytes_served=1_500_000,
    )
    accumulator = DownloadAccumulator(rules)
    delta = accumulator.apply([request, ...], {episode_id: EpisodeMedia(...)})
    # delta.downloads_added / downloads_removed / ads_added / ads_removed

and on rebuild::

    result = count_downloads(stored_requests, media_by_episode, rules)

Modules: :mod:`.records` (requests, downloads, ad deliveries), :mod:`.ip`
(normalising and hashing IPs, exclusions), :mod:`.user_agents` (classifier
over the OPAWG user-agents-v2 lists in ``opawg/`` and our overlay),
:mod:`.ranges` (Range headers, byte unions), :mod:`.filters` (what never
counts, and why), :mod:`.windows` (counting windows), :mod:`.media` (episode
facts, the one-minute threshold), :mod:`.downloads` (batch counting),
:mod:`.accumulator` (incremental counting), :mod:`.ads` (ads delivered),
:mod:`.listeners` (unique listeners), :mod:`.settings` (per-tenant settings).
"""

from services.shared.client_ip import InvalidIpError, IpExclusions, IpHasher, normalise_ip, parse_ip

from .accumulator import CountDelta, DownloadAccumulator, WindowState
from .ads import delivered_slots
from .downloads import CountResult, count_downloads, is_download, is_full_response
from .filters import (
    DEFAULT_VOLUME_LIMIT,
    FilterReason,
    RequestFilter,
    VolumeFlag,
    flag_implausible_volume,
    is_apple_watch,
)
from .listeners import Period, hll_member, listeners_by_period, period_start
from .media import AdInsertion, AdSlot, EpisodeMedia
from .ranges import (
    ByteRangeSpec,
    IntervalSet,
    RangeError,
    first_range,
    is_probe_range,
    merge_intervals,
    parse_range,
    served_interval,
    union_size,
)
from .records import UNKNOWN_COUNTRY, AdDelivery, Download, ListenerRequest
from .settings import CountingRules, CountingSettings, compile_rules
from .user_agents import DeviceClass, UserAgentClassifier, UserAgentInfo, default_classifier
from .windows import DAY_US, CalendarDays, CountingWindow, from_us, to_us

__all__ = [
    "DAY_US",
    "DEFAULT_VOLUME_LIMIT",
    "UNKNOWN_COUNTRY",
    "AdDelivery",
    "AdInsertion",
    "AdSlot",
    "ByteRangeSpec",
    "CalendarDays",
    "CountDelta",
    "CountResult",
    "CountingRules",
    "CountingSettings",
    "CountingWindow",
    "DeviceClass",
    "Download",
    "DownloadAccumulator",
    "EpisodeMedia",
    "FilterReason",
    "IntervalSet",
    "InvalidIpError",
    "IpExclusions",
    "IpHasher",
    "ListenerRequest",
    "Period",
    "RangeError",
    "RequestFilter",
    "UserAgentClassifier",
    "UserAgentInfo",
    "VolumeFlag",
    "WindowState",
    "compile_rules",
    "count_downloads",
    "default_classifier",
    "delivered_slots",
    "first_range",
    "flag_implausible_volume",
    "from_us",
    "hll_member",
    "is_apple_watch",
    "is_download",
    "is_full_response",
    "is_probe_range",
    "listeners_by_period",
    "merge_intervals",
    "normalise_ip",
    "parse_ip",
    "parse_range",
    "period_start",
    "served_interval",
    "to_us",
    "union_size",
]
