"""Downloads (ARCHITECTURE.md section 8, rules 2 to 4): the batch function and the download rule.

:func:`count_downloads` counts a tenant's requests over a time range in one
go: the rebuild command uses it, and it is the reference the incremental
:class:`~.accumulator.DownloadAccumulator` is tested against. It

1. drops repeated request ids (the first one stands) and filtered requests
   (:class:`~.filters.FilterReason`, counted per reason);
2. groups the rest by (listener, episode) and splits each group into counting
   windows (:mod:`.windows`);
3. counts a window as one download when :func:`is_download` holds for the
   union of the bytes its requests delivered;
4. stamps the download with its window's first request (earliest time; among
   simultaneous ones the smallest country code, so the choice never depends
   on arrival order): time, country, app, device class and OS (a browser's
   app is the web player its Referer names, if any);
5. lists the ad slots each download delivered (:mod:`.ads`).

Episodes missing from ``media`` (e.g. deleted since) count with unknown facts:
only a complete 200 response makes a download.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from .ads import delivered_slots
from .filters import FilterReason
from .media import EpisodeMedia
from .ranges import IntervalSet, served_interval
from .records import AdDelivery, Download, ListenerRequest
from .settings import CountingRules, CountingSettings, compile_rules
from .windows import DAY_US

DEFAULT_SETTINGS = CountingSettings()


def is_download(delivered: IntervalSet, full_response: bool, media: EpisodeMedia) -> bool:
    """The IAB byte rule for one listener, episode and window.

    With a one-minute threshold: at least ``threshold_bytes`` distinct bytes
    delivered, wherever in the file (apps seek and resume; the standard
    measures bytes delivered, not a prefix). Without one (episode under a
    minute, bitrate or ID3 size unknown): the complete file, i.e. every byte
    of ``[0, size - 1]``, or, when the size is unknown too, a 200 response
    that sent a body (``full_response``).
    """
    threshold = media.threshold_bytes
    if threshold is not None:
        return delivered.total >= threshold
    if media.size_bytes > 0:
        return delivered.covers(0, media.size_bytes - 1)
    return full_response


def is_full_response(request: ListenerRequest) -> bool:
    """A 200 sends the whole representation: the complete file when its size is unknown."""
    return request.status == 200 and request.bytes_served > 0


def rules_for(settings: CountingSettings | CountingRules) -> CountingRules:
    """``settings`` compiled, or the rules themselves."""
    return settings if isinstance(settings, CountingRules) else compile_rules(settings)


@dataclass(frozen=True, slots=True)
class CountResult:
    """Everything counted from a set of requests."""

    downloads: tuple[Download, ...]
    """By time, episode, listener."""
    ads: tuple[AdDelivery, ...]
    """By download, then slot id."""
    filtered: Mapping[FilterReason, int]
    """Requests not counted, per reason."""
    duplicates: int
    """Requests dropped because their id came earlier."""


def count_downloads(
    requests: Iterable[ListenerRequest],
    media: Mapping[str, EpisodeMedia],
    settings: CountingSettings | CountingRules = DEFAULT_SETTINGS,
) -> CountResult:
    """Counts downloads and ads delivered from all of a tenant's requests for a time range.

    Give whole counting windows (the rebuild widens its range to them): a
    window cut in half counts what its half delivered.
    """
    rules = rules_for(settings)
    seen: set[str] = set()
    duplicates = 0
    filtered: Counter[FilterReason] = Counter()
    groups: dict[tuple[bytes, str], list[ListenerRequest]] = {}
    for request in requests:
        if request.request_id in seen:
            duplicates += 1
            continue
        seen.add(request.request_id)
        reason = rules.filter.reason(request)
        if reason is not None:
            filtered[reason] += 1
            continue
        groups.setdefault((request.listener_id, request.episode_id), []).append(request)

    downloads: list[Download] = []
    ads: list[AdDelivery] = []
    for (_, episode_id), group in groups.items():
        facts = media.get(episode_id) or EpisodeMedia(episode_id)
        group.sort(key=lambda r: (r.time_us, r.country))
        for window_start, members in _windows(group, rules):
            delivered = IntervalSet.of(
                interval
                for r in members
                if (
                    interval := served_interval(
                        r.range_header, r.status, r.bytes_served, facts.size_bytes
                    )
                )
                is not None
            )
            full = any(is_full_response(r) for r in members)
            if not is_download(delivered, full, facts):
                continue
            first = members[0]
            info = rules.classifier.classify(first.user_agent, first.referer)
            download = Download(
                listener_id=first.listener_id,
                household_id=first.household_id,
                episode_id=episode_id,
                window_start_us=window_start,
                time_us=first.time_us,
                app=info.app,
                device_class=info.device_class,
                os=info.os,
                country=first.country,
            )
            downloads.append(download)
            ads.extend(AdDelivery(download, slot) for slot in delivered_slots(delivered, facts))
    downloads.sort(key=Download.sort_key)
    ads.sort(key=AdDelivery.sort_key)
    return CountResult(tuple(downloads), tuple(ads), dict(filtered), duplicates)


def _windows(
    ordered: Sequence[ListenerRequest], rules: CountingRules
) -> Iterator[tuple[int, list[ListenerRequest]]]:
    """One listener's time-ordered requests for one episode, split into windows."""
    members: list[ListenerRequest] = []
    start = end = 0
    for request in ordered:
        if members and request.time_us < end:
            members.append(request)
            continue
        if members:
            yield start, members
        if rules.days is None:
            start, end = request.time_us, request.time_us + DAY_US
        else:
            start, end = rules.days.bounds(request.time_us)
        members = [request]
    if members:
        yield start, members
