"""Incremental counting for ingestion: apply batches, learn exactly what changed.

:class:`DownloadAccumulator` keeps one :class:`WindowState` per (listener,
episode, window) and applies batches of requests as they arrive.
:meth:`~DownloadAccumulator.apply` returns a :class:`CountDelta`: the
downloads and ad deliveries that appeared, and the ones that must be taken
back. Applying every delta in order (add the added, subtract the removed)
gives exactly :func:`~.downloads.count_downloads` over the same requests,
whatever the arrival order, batch split or exact duplicates. A request id
seen twice is harmless: its bytes are already in the union, its time already
considered.

Taking back is rare but necessary for exactness:

- a late request earlier in a window than its first one moves the download's
  time (and maybe its country): the old download is removed and the new one
  added, so hourly rollups move it to the right hour;
- with rolling windows, a late request can open a window before existing
  ones and redraw them; windows that disappear come back in
  ``dropped_windows`` and their downloads are removed.

Media facts are taken from each batch's ``media`` mapping when a window is
evaluated; a catalog change affects windows touched afterwards (RebuildCounts
redoes the past).

State and persistence: a calendar-day window holds the union of delivered
byte intervals, the first request's time and country, the listener's
User-Agent classification, whether a 200 response was seen, whether it was
counted and which ad slots were reported. A rolling window also keeps its
requests' (time, country, interval) because a late request can split it.
The classification is the first request's, Referer included (a browser's web
player); rolling windows take it from the earliest request of the batch that
drew them, since their pieces keep no Referer: a browser listener whose
Referer changes inside one rolling window may name another web player than
the batch function would.
:meth:`WindowState.to_dict` / :meth:`WindowState.from_dict` make it JSON;
``changed_windows`` and ``dropped_windows`` in each delta say what to upsert
and delete, in the same transaction as the delta, for exactly-once counts.

Memory stays bounded with :meth:`~DownloadAccumulator.evict`: windows ending
at or before a watermark are dropped, and requests that would belong to a
window ending at or before it are reported as ``late_requests`` rather than
counted (the rebuild command counts them from raw requests). The window is
what decides, not the request's own time: with rolling windows, a request a
little older than the watermark opens a window that is still open.

For the counting funnel (:mod:`.funnel`) a delta also names the late requests
and, like downloads, the windows reported as below the download threshold
(``uncounted_added`` / ``uncounted_removed``, at their first request's time).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .ads import delivered_slots
from .downloads import is_download, is_full_response, rules_for
from .filters import FilterReason
from .funnel import UncountedWindow
from .media import EpisodeMedia
from .ranges import IntervalSet, served_interval
from .records import AdDelivery, Download, ListenerRequest
from .settings import CountingRules, CountingSettings
from .user_agents import DeviceClass, UserAgentInfo
from .windows import DAY_US

# A rolling window's request: (time_us, country, first byte, last byte, 200 response).
# first byte is -1 when the request delivered nothing placeable.
Piece = tuple[int, str, int, int, bool]


class WindowState(IntervalSet):
    """What counting remembers about one (listener, episode, window).

    The state is the union of bytes delivered in the window (it is an
    :class:`~.ranges.IntervalSet`) plus the first request's time and country,
    the listener's User-Agent classification (one per listener, since the
    listener id hashes the User-Agent), whether a 200 response was seen, and
    what was reported: the download's time and country, and its ad slots.
    Only ints, strings and tuples besides the shared classification, so that
    a million open windows are a million objects to the garbage collector, not
    several million.
    """

    __slots__ = (
        "ads",
        "below_us",
        "episode_id",
        "first_country",
        "first_us",
        "full_response",
        "household_id",
        "info",
        "listener_id",
        "pieces",
        "reported_country",
        "reported_us",
        "start_us",
        "touched",
    )

    def __init__(
        self,
        listener_id: bytes,
        household_id: bytes,
        episode_id: str,
        start_us: int,
        first_us: int,
        first_country: str,
        info: UserAgentInfo,
        rolling: bool,
    ) -> None:
        super().__init__()
        self.listener_id = listener_id
        self.household_id = household_id
        self.episode_id = episode_id
        self.start_us = start_us
        self.first_us = first_us
        self.first_country = first_country
        self.info = info
        self.full_response = False
        self.reported_us = -1
        """Time of the download reported for this window; -1 while not counted."""
        self.reported_country = ""
        self.below_us = -1
        """Time of the window reported as below the threshold (for the funnel); -1 if not."""
        self.ads: tuple[str, ...] = ()
        """Ad slot ids reported as delivered in the download."""
        self.pieces: tuple[Piece, ...] | None = () if rolling else None
        self.touched = False

    @property
    def counted(self) -> bool:
        """Whether a download is reported for this window."""
        return self.reported_us >= 0

    @property
    def download(self) -> Download | None:
        """The download reported for this window, if any."""
        if self.reported_us < 0:
            return None
        return self._download(self.reported_us, self.reported_country)

    def _download(self, time_us: int, country: str) -> Download:
        info = self.info
        return Download(
            listener_id=self.listener_id,
            household_id=self.household_id,
            episode_id=self.episode_id,
            window_start_us=self.start_us,
            time_us=time_us,
            app=info.app,
            device_class=info.device_class,
            os=info.os,
            country=country,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (take it between batches, not during one)."""
        return {
            "listener_id": self.listener_id.hex(),
            "household_id": self.household_id.hex(),
            "episode_id": self.episode_id,
            "start_us": self.start_us,
            "first_us": self.first_us,
            "first_country": self.first_country,
            "app": self.info.app,
            "device_class": self.info.device_class.value,
            "os": self.info.os,
            "intervals": [list(i) for i in self.intervals()],
            "full_response": self.full_response,
            "counted": self.counted,
            "ads": list(self.ads),
            "pieces": None if self.pieces is None else [list(p) for p in self.pieces],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowState:
        """The window :meth:`to_dict` described.

        After :meth:`DownloadAccumulator.apply` returns, what was reported for
        a counted window is its current first request, so ``counted`` is all
        that needs saving about it.
        """
        info = UserAgentInfo(data["app"], DeviceClass(data["device_class"]), data["os"])
        pieces = data["pieces"]
        state = cls(
            bytes.fromhex(data["listener_id"]),
            bytes.fromhex(data["household_id"]),
            data["episode_id"],
            int(data["start_us"]),
            int(data["first_us"]),
            data["first_country"],
            info,
            rolling=pieces is not None,
        )
        for first, last in data["intervals"]:
            state.add(int(first), int(last))
        state.full_response = bool(data["full_response"])
        state.ads = tuple(data["ads"])
        if pieces is not None:
            state.pieces = tuple(
                (int(t), c, int(f), int(la), bool(full)) for t, c, f, la, full in pieces
            )
        if data["counted"]:
            state.reported_us = state.first_us
            state.reported_country = state.first_country
        else:
            state.below_us = state.first_us
        return state


@dataclass(slots=True)
class CountDelta:
    """What one :meth:`DownloadAccumulator.apply` changed."""

    downloads_added: list[Download] = field(default_factory=list)
    downloads_removed: list[Download] = field(default_factory=list)
    ads_added: list[AdDelivery] = field(default_factory=list)
    ads_removed: list[AdDelivery] = field(default_factory=list)
    filtered: dict[FilterReason, int] = field(default_factory=dict)
    """Requests not counted, per reason."""
    applied_requests: int = 0
    """Requests that passed the filters and were added to a window."""
    late_requests: int = 0
    """Countable requests for windows already evicted: left to the rebuild."""
    late: list[ListenerRequest] = field(default_factory=list)
    """Those requests themselves, for the counting funnel."""
    uncounted_added: list[UncountedWindow] = field(default_factory=list)
    """Windows now reported as below the download threshold (for the counting funnel)."""
    uncounted_removed: list[UncountedWindow] = field(default_factory=list)
    """Windows no longer reported so: counted since, moved or redrawn."""
    changed_windows: list[WindowState] = field(default_factory=list)
    """Windows created or updated: persist these."""
    dropped_windows: list[WindowState] = field(default_factory=list)
    """Rolling windows that no longer exist: delete these."""


class DownloadAccumulator:
    """Counts downloads incrementally for one tenant's counting settings."""

    def __init__(self, settings: CountingSettings | CountingRules) -> None:
        self.rules = rules_for(settings)
        self._calendar: dict[tuple[bytes, str, int], WindowState] = {}
        self._rolling: dict[tuple[bytes, str], list[WindowState]] = {}
        self._watermark_us: int | None = None
        self._unknown_media: dict[str, EpisodeMedia] = {}

    def __len__(self) -> int:
        """Number of open windows."""
        return len(self._calendar) + sum(len(ws) for ws in self._rolling.values())

    def windows(self) -> Iterator[WindowState]:
        """Every open window."""
        yield from self._calendar.values()
        for states in self._rolling.values():
            yield from states

    def load(self, states: Iterable[WindowState]) -> None:
        """Restores windows persisted from an accumulator with the same settings."""
        rolling = self.rules.days is None
        loaded: set[tuple[bytes, str]] = set()
        for state in states:
            if (state.pieces is not None) != rolling:
                raise ValueError("window state from a different counting window setting")
            if rolling:
                key = (state.listener_id, state.episode_id)
                self._rolling.setdefault(key, []).append(state)
                loaded.add(key)
            else:
                self._calendar[(state.listener_id, state.episode_id, state.start_us)] = state
        for key in loaded:
            self._rolling[key].sort(key=lambda w: w.start_us)

    def evict(self, watermark_us: int) -> list[WindowState]:
        """Drops windows that end at or before ``watermark_us``; returns them.

        From then on, countable requests that would fall in a window ending at
        or before the watermark (open, closed or yet to be opened) are
        ``late_requests``; all others count. The watermark never moves back.
        """
        if self._watermark_us is not None and watermark_us < self._watermark_us:
            watermark_us = self._watermark_us
        self._watermark_us = watermark_us
        evicted: list[WindowState] = []
        days = self.rules.days
        if days is not None:
            for key, state in list(self._calendar.items()):
                if days.bounds(state.start_us)[1] <= watermark_us:
                    evicted.append(self._calendar.pop(key))
            return evicted
        for listener_episode, states in list(self._rolling.items()):
            keep = [w for w in states if w.start_us + DAY_US > watermark_us]
            if len(keep) != len(states):
                evicted.extend(w for w in states if w.start_us + DAY_US <= watermark_us)
                if keep:
                    self._rolling[listener_episode] = keep
                else:
                    del self._rolling[listener_episode]
        return evicted

    def apply(
        self, requests: Iterable[ListenerRequest], media: Mapping[str, EpisodeMedia]
    ) -> CountDelta:
        """Adds a batch of requests; returns what that changed."""
        delta = CountDelta()
        if self.rules.days is None:
            self._apply_rolling(requests, media, delta)
        else:
            self._apply_calendar(requests, media, delta)
        return delta

    def _media(self, media: Mapping[str, EpisodeMedia], episode_id: str) -> EpisodeMedia:
        facts = media.get(episode_id)
        if facts is None:
            facts = self._unknown_media.get(episode_id)
            if facts is None:
                facts = self._unknown_media[episode_id] = EpisodeMedia(episode_id)
        return facts

    def _apply_calendar(
        self,
        requests: Iterable[ListenerRequest],
        media: Mapping[str, EpisodeMedia],
        delta: CountDelta,
    ) -> None:
        days = self.rules.days
        assert days is not None
        bounds = days.bounds
        reason_of = self.rules.filter.reason
        classify = self.rules.classifier.classify
        windows = self._calendar
        watermark = self._watermark_us
        filtered = delta.filtered
        touched = delta.changed_windows
        applied = late = 0
        for request in requests:
            reason = reason_of(request)
            if reason is not None:
                filtered[reason] = filtered.get(reason, 0) + 1
                continue
            time_us = request.time_us
            start, end = bounds(time_us)
            if watermark is not None and end <= watermark:
                late += 1
                delta.late.append(request)
                continue
            key = (request.listener_id, request.episode_id, start)
            state = windows.get(key)
            if state is None:
                state = WindowState(
                    request.listener_id,
                    request.household_id,
                    request.episode_id,
                    start,
                    time_us,
                    request.country,
                    classify(request.user_agent, request.referer),
                    rolling=False,
                )
                windows[key] = state
            elif time_us < state.first_us or (
                time_us == state.first_us and request.country < state.first_country
            ):
                state.first_us = time_us
                state.first_country = request.country
                state.info = classify(request.user_agent, request.referer)
            facts = media.get(request.episode_id)
            interval = served_interval(
                request.range_header,
                request.status,
                request.bytes_served,
                facts.size_bytes if facts else 0,
            )
            if interval is not None:
                state.add(*interval)
            if is_full_response(request):
                state.full_response = True
            applied += 1
            if not state.touched:
                state.touched = True
                touched.append(state)
        delta.applied_requests = applied
        delta.late_requests = late
        for state in touched:
            state.touched = False
            self._settle(state, self._media(media, state.episode_id), delta)

    def _apply_rolling(
        self,
        requests: Iterable[ListenerRequest],
        media: Mapping[str, EpisodeMedia],
        delta: CountDelta,
    ) -> None:
        reason_of = self.rules.filter.reason
        classify = self.rules.classifier.classify
        watermark = self._watermark_us
        filtered = delta.filtered
        pending: dict[tuple[bytes, str], tuple[ListenerRequest, list[Piece]]] = {}
        for request in requests:
            reason = reason_of(request)
            if reason is not None:
                filtered[reason] = filtered.get(reason, 0) + 1
                continue
            time_us = request.time_us
            key = (request.listener_id, request.episode_id)
            # Late when the window the request falls in closed at or before the
            # watermark: an open window's, else the one it opens, which ends 24 hours
            # after it (so it is late when that is, and only then). A closed window
            # covering it is among the loaded ones: ingestion loads every stored
            # window that started in the 24 hours before, and keeps windows 48
            # hours past the watermark.
            if watermark is not None and (
                time_us + DAY_US <= watermark
                or (
                    time_us < watermark
                    and any(
                        w.start_us <= time_us < w.start_us + DAY_US <= watermark
                        for w in self._rolling.get(key, ())
                    )
                )
            ):
                delta.late_requests += 1
                delta.late.append(request)
                continue
            facts = media.get(request.episode_id)
            interval = served_interval(
                request.range_header,
                request.status,
                request.bytes_served,
                facts.size_bytes if facts else 0,
            )
            first, last = interval if interval is not None else (-1, -1)
            piece = (time_us, request.country, first, last, is_full_response(request))
            entry = pending.get(key)
            if entry is None:
                pending[key] = (request, [piece])
            else:
                if time_us < entry[0].time_us:
                    pending[key] = (request, entry[1])
                entry[1].append(piece)
            delta.applied_requests += 1
        for key, (example, pieces) in pending.items():
            info = classify(example.user_agent, example.referer)
            self._rechain(key, example.household_id, info, pieces, media, delta)

    def _rechain(
        self,
        key: tuple[bytes, str],
        household_id: bytes,
        info: UserAgentInfo,
        new_pieces: list[Piece],
        media: Mapping[str, EpisodeMedia],
        delta: CountDelta,
    ) -> None:
        """Redraws one listener's rolling windows for an episode from the earliest new request.

        Windows that end before that request cannot change; everything after
        is rebuilt from its requests, reusing what was reported for windows
        that keep their start.
        """
        earliest = min(p[0] for p in new_pieces)
        old = self._rolling.get(key, [])
        if not old or earliest >= old[-1].start_us:
            self._extend(key, household_id, info, new_pieces, media, delta)
            return
        cut = 0
        while cut < len(old) and old[cut].start_us + DAY_US <= earliest:
            cut += 1
        kept, redrawn = old[:cut], old[cut:]
        pieces = set(new_pieces)
        for w in redrawn:
            assert w.pieces is not None
            pieces.update(w.pieces)
        previous = {w.start_us: w for w in redrawn}
        groups: list[list[Piece]] = []
        end = 0
        for piece in sorted(pieces):
            if not groups or piece[0] >= end:
                groups.append([])
                end = piece[0] + DAY_US
            groups[-1].append(piece)
        listener_id, episode_id = key
        windows: list[WindowState] = []
        for group in groups:
            start_us, country = group[0][0], group[0][1]
            state = WindowState(
                listener_id, household_id, episode_id, start_us, start_us, country, info, True
            )
            state.pieces = tuple(group)
            for _, _, first, last, full in group:
                if first >= 0:
                    state.add(first, last)
                if full:
                    state.full_response = True
            before = previous.pop(start_us, None)
            if before is not None:
                state.reported_us = before.reported_us
                state.reported_country = before.reported_country
                state.ads = before.ads
                state.below_us = before.below_us
            windows.append(state)
        facts = self._media(media, episode_id)
        for gone in previous.values():
            self._retract(gone, delta)
            self._unmark_uncounted(gone, delta)
            delta.dropped_windows.append(gone)
        for state in windows:
            self._settle(state, facts, delta)
        delta.changed_windows.extend(windows)
        self._rolling[key] = kept + windows

    def _extend(
        self,
        key: tuple[bytes, str],
        household_id: bytes,
        info: UserAgentInfo,
        new_pieces: list[Piece],
        media: Mapping[str, EpisodeMedia],
        delta: CountDelta,
    ) -> None:
        """:meth:`_rechain` when nothing is earlier than the last window: no window moves."""
        windows = self._rolling.setdefault(key, [])
        state = windows[-1] if windows else None
        end = state.start_us + DAY_US if state else 0
        touched: list[WindowState] = []
        listener_id, episode_id = key
        for piece in sorted(set(new_pieces)):
            time_us, country, first, last, full = piece
            if state is None or time_us >= end:
                state = WindowState(
                    listener_id, household_id, episode_id, time_us, time_us, country, info, True
                )
                windows.append(state)
                end = time_us + DAY_US
            pieces = state.pieces
            assert pieces is not None
            if piece in pieces:
                continue
            state.pieces = (*pieces, piece)
            if time_us == state.first_us and country < state.first_country:
                state.first_country = country
            if first >= 0:
                state.add(first, last)
            if full:
                state.full_response = True
            if not touched or touched[-1] is not state:
                touched.append(state)
        facts = self._media(media, episode_id)
        for state in touched:
            self._settle(state, facts, delta)
        delta.changed_windows.extend(touched)

    def _settle(self, state: WindowState, facts: EpisodeMedia, delta: CountDelta) -> None:
        """Brings what was reported for a window in line with its state."""
        if not is_download(state, state.full_response, facts):
            self._retract(state, delta)
            if state.below_us != state.first_us:
                self._unmark_uncounted(state, delta)
                state.below_us = state.first_us
                delta.uncounted_added.append(_uncounted(state, state.first_us))
            return
        self._unmark_uncounted(state, delta)
        slots = delivered_slots(state, facts) if facts.ad_slots else ()
        if state.reported_us == state.first_us and state.reported_country == state.first_country:
            if slots != state.ads:
                reported = state._download(state.first_us, state.first_country)
                delta.ads_added.extend(AdDelivery(reported, s) for s in slots if s not in state.ads)
                delta.ads_removed.extend(
                    AdDelivery(reported, s) for s in state.ads if s not in slots
                )
                state.ads = slots
            return
        self._retract(state, delta)
        current = state._download(state.first_us, state.first_country)
        state.reported_us = state.first_us
        state.reported_country = state.first_country
        state.ads = slots
        delta.downloads_added.append(current)
        delta.ads_added.extend(AdDelivery(current, s) for s in slots)

    @staticmethod
    def _unmark_uncounted(state: WindowState, delta: CountDelta) -> None:
        if state.below_us >= 0:
            delta.uncounted_removed.append(_uncounted(state, state.below_us))
            state.below_us = -1

    @staticmethod
    def _retract(state: WindowState, delta: CountDelta) -> None:
        reported = state.download
        if reported is None:
            return
        delta.downloads_removed.append(reported)
        delta.ads_removed.extend(AdDelivery(reported, s) for s in state.ads)
        state.reported_us = -1
        state.ads = ()


def _uncounted(state: WindowState, time_us: int) -> UncountedWindow:
    return UncountedWindow(state.episode_id, state.listener_id, state.start_us, time_us)
