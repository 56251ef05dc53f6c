"""Properties of counting over generated traffic (Hypothesis).

The traffic: a few listeners (some of them bots or Apple Watches) behind
shared IPs, three episodes (one with a one-minute threshold and ad slots, one
under a minute, one without media facts), over three days around a DST
change, with full GETs, open and closed ranges, suffixes, probes, HEADs,
failed statuses and truncated bodies. Byte offsets come from a coarse grid so
that unions often land exactly on thresholds and ad boundaries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import replace
from itertools import pairwise
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from services.analytics.counting import (
    AdInsertion,
    AdSlot,
    CountingSettings,
    CountingWindow,
    CountResult,
    DownloadAccumulator,
    EpisodeMedia,
    ListenerRequest,
    WindowState,
    count_downloads,
)

from .support import (
    APPLE_PODCASTS,
    APPLE_WATCH,
    BOT_AGENTS,
    CHROME,
    HASHER,
    SPOTIFY,
    at,
)

# 8 kbps: one minute is 60,000 bytes, plus a 1,000-byte ID3 tag.
SMALL = EpisodeMedia(
    "small",
    size_bytes=200_000,
    id3_size_bytes=1_000,
    bitrate_bps=8_000,
    duration_s=199.0,
    ad_slots=(
        AdSlot("pre", AdInsertion.DYNAMIC, 1_000, 20_999),
        AdSlot("early-read", AdInsertion.BAKED_IN, 30_000, 39_999),
        AdSlot("late-read", AdInsertion.BAKED_IN, 120_000, 139_999),
        AdSlot("mid", AdInsertion.DYNAMIC, 100_000, 119_999),
    ),
)
TINY = EpisodeMedia(
    "tiny",
    size_bytes=40_000,
    id3_size_bytes=1_000,
    bitrate_bps=8_000,
    duration_s=39.0,
    ad_slots=(AdSlot("pre", AdInsertion.DYNAMIC, 1_000, 9_999),),
)
MEDIA = {SMALL.episode_id: SMALL, TINY.episode_id: TINY}
EPISODES = ["small", "tiny", "gone"]
SIZES = {"small": 200_000, "tiny": 40_000, "gone": 100_000}
GRID = [0, 1, 2, 1_000, 10_000, 20_000, 21_000, 30_000, 40_000, 50_000, 61_000, 100_000, 140_000]

IPS = ["203.0.113.1", "203.0.113.2", "2001:db8:1:2::1", "2001:db8:1:2::99"]
LISTENERS = [APPLE_PODCASTS, SPOTIFY, CHROME]
NON_LISTENERS = [*BOT_AGENTS, APPLE_WATCH, ""]

# Three days from Saturday evening, across Europe's switch to summer time.
START = at("2024-03-30T18:00:00")
MINUTE = 60_000_000

# Any minute of the three days, or one of a few, so that requests often tie.
minutes = st.one_of(st.integers(0, 3 * 24 * 60), st.sampled_from([0, 1, 359, 360, 1440, 1800]))

WINDOW_SETTINGS = [
    CountingSettings(),
    CountingSettings(window=CountingWindow.TENANT_DAY, time_zone="Europe/Berlin"),
    CountingSettings(window=CountingWindow.TENANT_DAY, time_zone="America/St_Johns"),
    CountingSettings(window=CountingWindow.ROLLING_24H),
]
any_settings = st.sampled_from(WINDOW_SETTINGS)


@st.composite
def listener_request(
    draw: st.DrawFn, agents: Sequence[str], ips: Sequence[str], episodes: Sequence[str]
) -> ListenerRequest:
    """A request without its id."""
    episode = draw(st.sampled_from(episodes))
    size = SIZES[episode]
    kind = draw(st.sampled_from(["full", "full", "open", "closed", "suffix", "probe"]))
    offset = draw(st.sampled_from([o for o in GRID if o < size]))
    status, range_header, served = 200, "", size
    if kind == "open":
        status, range_header = 206, f"bytes={offset}-"
        served = size - offset
    elif kind == "closed":
        last = draw(st.sampled_from([o for o in GRID if offset < o < size] + [size])) - 1
        status, range_header = 206, f"bytes={offset}-{last}"
        served = last - offset + 1
    elif kind == "suffix":
        status, range_header = 206, f"bytes=-{size - offset}"
        served = size - offset
    elif kind == "probe":
        status, range_header, served = 206, "bytes=0-1", 2
    if draw(st.integers(0, 4)) == 0:
        served = draw(st.sampled_from([0, 1, served // 2, 61_000]))
    if draw(st.integers(0, 9)) == 0:
        status = draw(st.sampled_from([304, 404, 416]))
    return ListenerRequest.from_raw(
        request_id="",
        time_us=START + draw(minutes) * MINUTE + draw(st.integers(0, 1)),
        episode_id=episode,
        client_ip=draw(st.sampled_from(ips)),
        user_agent=draw(st.sampled_from(agents)),
        hasher=HASHER,
        method=draw(st.sampled_from(["GET", "GET", "GET", "HEAD"])),
        status=status,
        range_header=range_header,
        bytes_served=served,
        country_code=draw(st.sampled_from(["", "US", "DE"])),
    )


def with_ids(requests: list[ListenerRequest], prefix: str) -> list[ListenerRequest]:
    return [replace(r, request_id=f"{prefix}{i}") for i, r in enumerate(requests)]


def traffic(
    agents: Sequence[str] = LISTENERS + NON_LISTENERS, prefix: str = "r"
) -> st.SearchStrategy[list[ListenerRequest]]:
    """Spread over many listeners and episodes, or piled on one listener's episode."""
    spread = listener_request(agents, IPS, EPISODES)
    piled = listener_request(agents[:1], IPS[:1], EPISODES[:1])
    return st.one_of(st.lists(spread, max_size=40), st.lists(piled, max_size=25)).map(
        lambda rs: with_ids(rs, prefix)
    )


def outcome(result: CountResult) -> tuple[object, object]:
    return result.downloads, result.ads


def count(requests: Iterable[ListenerRequest], settings: CountingSettings) -> CountResult:
    return count_downloads(requests, MEDIA, settings)


def split(items: Sequence[ListenerRequest], cuts: Iterable[int]) -> list[Sequence[ListenerRequest]]:
    bounds = [0, *sorted(cuts), len(items)]
    return [items[a:b] for a, b in pairwise(bounds)]


class Net:
    """Sums of deltas; fails the moment anything is removed that was not there."""

    def __init__(self) -> None:
        self.counts: Counter[Hashable] = Counter()

    def apply(self, added: Sequence[Hashable], removed: Sequence[Hashable]) -> None:
        assert not set(added) & set(removed), "took back and reported the same thing"
        for item in removed:
            assert self.counts[item] == 1, "removed something never added"
            del self.counts[item]
        for item in added:
            assert self.counts[item] == 0, "added twice"
            self.counts[item] = 1

    def items(self) -> set[Hashable]:
        return set(self.counts)


@given(traffic(), st.data(), any_settings)
def test_duplicates_never_change_counts(
    requests: list[ListenerRequest], data: st.DataObject, window: CountingSettings
) -> None:
    repeats = data.draw(st.lists(st.sampled_from(requests), max_size=10)) if requests else []
    assert outcome(count(requests + repeats, window)) == outcome(count(requests, window))


@given(traffic(), st.randoms(use_true_random=False), any_settings)
def test_order_of_arrival_does_not_change_results(
    requests: list[ListenerRequest], rng: Random, window: CountingSettings
) -> None:
    shuffled = list(requests)
    rng.shuffle(shuffled)
    assert outcome(count(shuffled, window)) == outcome(count(requests, window))


@given(traffic(agents=NON_LISTENERS), any_settings)
def test_bots_watches_and_empty_user_agents_never_count(
    requests: list[ListenerRequest], window: CountingSettings
) -> None:
    result = count(requests, window)
    assert result.downloads == ()
    assert result.ads == ()


@given(traffic(agents=LISTENERS), traffic(agents=NON_LISTENERS, prefix="bot"), any_settings)
def test_adding_bot_traffic_changes_nothing(
    listeners: list[ListenerRequest], bots: list[ListenerRequest], window: CountingSettings
) -> None:
    assert outcome(count(listeners + bots, window)) == outcome(count(listeners, window))


@given(
    st.sampled_from([SMALL, TINY]),
    st.data(),
    st.sampled_from(IPS),
    st.sampled_from(LISTENERS),
)
def test_splitting_a_download_into_contiguous_ranges_gives_the_same_count(
    media: EpisodeMedia, data: st.DataObject, ip: str, agent: str
) -> None:
    size = media.size_bytes
    delivered = data.draw(st.integers(1, size), label="bytes delivered from the start")
    # A piece that is exactly bytes=0-1 would be a probe, which never counts.
    cut_points = st.integers(1, delivered - 1).filter(lambda cut: cut != 2)
    cuts = (
        data.draw(st.lists(cut_points, unique=True, max_size=8), label="cuts")
        if delivered > 1
        else []
    )
    bounds = [0, *sorted(cuts), delivered]
    time_us = at("2024-03-04T12:00:00")

    def make(i: int, range_header: str, status: int, served: int) -> ListenerRequest:
        return ListenerRequest.from_raw(
            request_id=f"q{i}",
            time_us=time_us + i,
            episode_id=media.episode_id,
            client_ip=ip,
            user_agent=agent,
            hasher=HASHER,
            status=status,
            range_header=range_header,
            bytes_served=served,
        )

    whole = [make(0, "", 200, delivered)]
    pieces = [
        make(i, f"bytes={a}-{b - 1}", 206, b - a) for i, (a, b) in enumerate(pairwise(bounds))
    ]
    one, many = count(whole, CountingSettings()), count(pieces, CountingSettings())
    assert len(one.downloads) == len(many.downloads)
    assert [a.slot_id for a in one.ads] == [a.slot_id for a in many.ads]


@settings(max_examples=150)
@given(traffic(), st.data(), any_settings)
def test_accumulator_equals_batch_in_any_order_split_and_with_duplicates(
    requests: list[ListenerRequest], data: st.DataObject, window: CountingSettings
) -> None:
    expected = count(requests, window)
    repeats = data.draw(st.lists(st.sampled_from(requests), max_size=10)) if requests else []
    feed = data.draw(st.permutations(requests + repeats), label="arrival order")
    cuts = data.draw(st.lists(st.integers(0, len(feed)), max_size=6), label="batch cuts")
    accumulator = DownloadAccumulator(window)
    downloads, ads = Net(), Net()
    for batch in split(feed, cuts):
        delta = accumulator.apply(batch, MEDIA)
        downloads.apply(delta.downloads_added, delta.downloads_removed)
        ads.apply(delta.ads_added, delta.ads_removed)
    assert downloads.items() == set(expected.downloads)
    assert ads.items() == set(expected.ads)
    assert {w.download for w in accumulator.windows() if w.counted} == set(expected.downloads)


@settings(max_examples=75)
@given(traffic(), st.data(), any_settings)
def test_persisting_and_restoring_between_batches_changes_nothing(
    requests: list[ListenerRequest], data: st.DataObject, window: CountingSettings
) -> None:
    expected = count(requests, window)
    cuts = data.draw(st.lists(st.integers(0, len(requests)), max_size=4), label="batch cuts")
    accumulator = DownloadAccumulator(window)
    stored: dict[tuple[bytes, str, int], dict[str, object]] = {}
    downloads = Net()
    for batch in split(requests, cuts):
        delta = accumulator.apply(batch, MEDIA)
        downloads.apply(delta.downloads_added, delta.downloads_removed)
        for gone in delta.dropped_windows:
            stored.pop((gone.listener_id, gone.episode_id, gone.start_us), None)
        for changed in delta.changed_windows:
            stored[(changed.listener_id, changed.episode_id, changed.start_us)] = changed.to_dict()
        accumulator = DownloadAccumulator(window)
        accumulator.load(WindowState.from_dict(state) for state in stored.values())
    assert downloads.items() == set(expected.downloads)
