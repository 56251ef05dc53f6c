"""The counting funnel: where every request received ends up, so a number can be audited.

Each request lands in exactly one terminal :class:`Outcome`:

- ``DUPLICATE``: its id was stored before (a resend); not stored again;
- ``FILTERED``: stored, never counts, for a :class:`~.filters.FilterReason`;
- ``LATE``: stored, countable, but its window closed before it arrived; left to the
  rebuild, which counts it (and so moves it to one of the buckets below);
- the countable rest falls into counting windows, and a window's *first* request
  (the one a download is stamped with) is ``DOWNLOAD`` when the window reached the
  byte rule (:func:`~.downloads.is_download`) and ``BELOW_THRESHOLD`` when it did
  not; every further request of a window is a ``WINDOW_REPEAT``.

So ``received = duplicates + filtered + late + below threshold + window repeats +
downloads``, and the downloads are exactly the counted downloads, at their time.
Outcomes are kept per (episode, request time): the time of a window's first request
is the download's time, which is what lets a period's funnel agree with its
downloads in the reports.

:func:`funnel_of_requests` is the batch function (the reference);
:func:`funnel_changes` turns one :meth:`~.accumulator.DownloadAccumulator.apply`
into funnel deltas, which summed over batches equal the batch function, whatever the
split or order, as :class:`~.accumulator.CountDelta` does for downloads;
:func:`funnel_of_day` is what a rebuild writes for the requests of one counting day.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

from .downloads import _windows, count_downloads, rules_for
from .filters import FilterReason
from .media import EpisodeMedia
from .records import ListenerRequest
from .settings import CountingRules, CountingSettings

if TYPE_CHECKING:
    from .accumulator import CountDelta, WindowState


class Outcome(StrEnum):
    """A request's terminal bucket in the funnel; stable values for storage."""

    DUPLICATE = "duplicate"
    FILTERED = "filtered"
    LATE = "late"
    BELOW_THRESHOLD = "below_threshold"
    WINDOW_REPEAT = "window_repeat"
    DOWNLOAD = "download"


class Arrival(StrEnum):
    """What counting made of a stored request on arrival (the acknowledgement's split)."""

    FILTERED = "filtered"
    LATE = "late"
    COUNTABLE = "countable"


@dataclass(frozen=True, slots=True)
class UncountedWindow:
    """A window reported as below the download threshold, at its first request's time."""

    episode_id: str
    listener_id: bytes
    window_start_us: int
    time_us: int


T = TypeVar("T", bound=Hashable)
FunnelKey = tuple[str, T, Outcome, FilterReason | None]
"""(episode id, time bucket, outcome, filter reason for FILTERED else None)."""
Funnel = dict[FunnelKey[int], int]
"""Requests per episode, request time in µs, outcome and reason."""

_ON_ARRIVAL = {
    Arrival.FILTERED: Outcome.FILTERED,
    Arrival.LATE: Outcome.LATE,
    # Until its window says otherwise (see _first).
    Arrival.COUNTABLE: Outcome.WINDOW_REPEAT,
}


def arrivals(
    requests: Sequence[ListenerRequest], delta: CountDelta, rules: CountingRules
) -> list[tuple[Arrival, FilterReason | None]]:
    """Per request given to the apply that made ``delta``: filtered (why), late or countable.

    Filtering is the rules' own verdict (the same cached function counting asked);
    lateness is what the accumulator reported.
    """
    late = {id(r) for r in delta.late}
    reason_of = rules.filter.reason
    # On the ingestion hot path: shared tuples, no attribute lookups in the loop.
    late_one: tuple[Arrival, FilterReason | None] = (Arrival.LATE, None)
    countable: tuple[Arrival, FilterReason | None] = (Arrival.COUNTABLE, None)
    filtered = Arrival.FILTERED
    result: list[tuple[Arrival, FilterReason | None]] = []
    append = result.append
    for request in requests:
        reason = reason_of(request)
        if reason is not None:
            append((filtered, reason))
        elif late and id(request) in late:
            append(late_one)
        else:
            append(countable)
    return result


def funnel_changes(
    requests: Sequence[ListenerRequest],
    outcomes: Sequence[tuple[Arrival, FilterReason | None]],
    delta: CountDelta,
    bucket: Callable[[int], T],
) -> dict[FunnelKey[T], int]:
    """The funnel deltas of one apply: every request as filtered, late or (for now) a
    window repeat, then each window's first request moved to DOWNLOAD or BELOW_THRESHOLD
    as the delta reports its window, and moved back when the delta takes that back.

    ``outcomes`` are the requests' :func:`arrivals`. Times are summed per
    ``bucket(time_us)`` (``lambda t: t`` keeps them): storage wants days, and summing
    early saves a dictionary entry per request.
    """
    on_arrival = _ON_ARRIVAL
    # Counter counts an iterable in C: the cheapest way to sum a batch per key.
    changes: Counter[FunnelKey[T]] = Counter(
        (request.episode_id, bucket(request.time_us), on_arrival[arrival], reason)
        for request, (arrival, reason) in zip(requests, outcomes, strict=True)
    )
    for firsts, outcome, sign in (
        (delta.downloads_added, Outcome.DOWNLOAD, 1),
        (delta.downloads_removed, Outcome.DOWNLOAD, -1),
        (delta.uncounted_added, Outcome.BELOW_THRESHOLD, 1),
        (delta.uncounted_removed, Outcome.BELOW_THRESHOLD, -1),
    ):
        if firsts:
            at = Counter((first.episode_id, bucket(first.time_us)) for first in firsts)
            for (episode_id, when), n in at.items():
                _first(changes, episode_id, when, outcome, sign * n)
    return {key: n for key, n in changes.items() if n}


def _first(
    changes: dict[FunnelKey[T], int], episode_id: str, when: T, outcome: Outcome, n: int
) -> None:
    """``n`` windows' first requests as ``outcome`` (from repeats; back when n < 0)."""
    changes[(episode_id, when, outcome, None)] += n
    changes[(episode_id, when, Outcome.WINDOW_REPEAT, None)] -= n


def add_funnels(total: dict[FunnelKey[T], int], more: Mapping[FunnelKey[T], int]) -> None:
    """Adds ``more`` into ``total`` in place, dropping keys that reach zero."""
    for key, n in more.items():
        value = total.get(key, 0) + n
        if value:
            total[key] = value
        else:
            total.pop(key, None)


def funnel_of_requests(
    requests: Iterable[ListenerRequest],
    media: Mapping[str, EpisodeMedia],
    settings: CountingSettings | CountingRules,
) -> Funnel:
    """The funnel of all of a tenant's requests for a time range in one go (no lateness).

    The first request with an id stands, later ones are duplicates; windows are drawn
    and judged by :func:`~.downloads.count_downloads`, whose downloads decide which
    windows' first requests are downloads.
    """
    rules = rules_for(settings)
    funnel: Funnel = defaultdict(int)
    seen: set[str] = set()
    stored: list[ListenerRequest] = []
    for request in requests:
        if request.request_id in seen:
            funnel[(request.episode_id, request.time_us, Outcome.DUPLICATE, None)] += 1
            continue
        seen.add(request.request_id)
        stored.append(request)
    counted = {
        (d.listener_id, d.episode_id, d.window_start_us)
        for d in count_downloads(stored, media, rules).downloads
    }
    groups: dict[tuple[bytes, str], list[ListenerRequest]] = defaultdict(list)
    for request in stored:
        reason = rules.filter.reason(request)
        if reason is None:
            groups[(request.listener_id, request.episode_id)].append(request)
        else:
            funnel[(request.episode_id, request.time_us, Outcome.FILTERED, reason)] += 1
    for (listener_id, episode_id), group in groups.items():
        group.sort(key=lambda r: (r.time_us, r.country))
        for start, members in _windows(group, rules):
            outcome = (
                Outcome.DOWNLOAD
                if (listener_id, episode_id, start) in counted
                else Outcome.BELOW_THRESHOLD
            )
            funnel[(episode_id, members[0].time_us, outcome, None)] += 1
            for other in members[1:]:
                funnel[(episode_id, other.time_us, Outcome.WINDOW_REPEAT, None)] += 1
    return dict(funnel)


def funnel_of_day(
    requests: Iterable[ListenerRequest],
    windows: Iterable[WindowState],
    rules: CountingRules,
    start_us: int,
    end_us: int,
    bucket: Callable[[int], T],
) -> dict[FunnelKey[T], int]:
    """The funnel of the requests in [start_us, end_us), recounted: ``windows`` are the
    settled windows that start in the range (every request in the range that is not
    filtered belongs to one of them or to a window that started before). Times are
    summed per ``bucket(time_us)``."""
    funnel: dict[FunnelKey[T], int] = defaultdict(int)
    reason_of = rules.filter.reason
    for request in requests:
        if not start_us <= request.time_us < end_us:
            continue
        reason = reason_of(request)
        outcome = Outcome.WINDOW_REPEAT if reason is None else Outcome.FILTERED
        funnel[(request.episode_id, bucket(request.time_us), outcome, reason)] += 1
    for window in windows:
        outcome = Outcome.DOWNLOAD if window.counted else Outcome.BELOW_THRESHOLD
        _first(funnel, window.episode_id, bucket(window.first_us), outcome, 1)
    return {key: n for key, n in funnel.items() if n}
