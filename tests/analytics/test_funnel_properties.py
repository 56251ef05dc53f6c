"""The counting funnel over generated traffic (Hypothesis): every request lands in
exactly one bucket, the downloads bucket is the counted downloads, and the deltas of
the incremental accumulator add up to the batch function whatever the batch split,
arrival order, resends or persisting between batches (the traffic of
test_properties)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.analytics.counting import (
    CountingSettings,
    DownloadAccumulator,
    ListenerRequest,
    WindowState,
    compile_rules,
)
from services.analytics.counting.funnel import (
    Arrival,
    Funnel,
    Outcome,
    add_funnels,
    arrivals,
    funnel_changes,
    funnel_of_requests,
)

from .support import APPLE_PODCASTS, HASHER
from .test_properties import (
    MEDIA,
    MINUTE,
    START,
    WINDOW_SETTINGS,
    any_settings,
    count,
    split,
    traffic,
)


def same(time_us: int) -> int:
    return time_us


def by_outcome(funnel: Funnel) -> Counter[Outcome]:
    totals: Counter[Outcome] = Counter()
    for (_, _, outcome, _), n in funnel.items():
        totals[outcome] += n
    return totals


def ingest(
    feed: Sequence[ListenerRequest],
    cuts: list[int],
    window: CountingSettings,
    *,
    persist: bool = False,
    watermark_us: int | None = None,
) -> Funnel:
    """What ingestion does: drop resent ids, apply the rest batch by batch, add the funnel
    deltas (optionally restoring the accumulator from persisted states between batches)."""
    rules = compile_rules(window)
    accumulator = DownloadAccumulator(rules)
    if watermark_us is not None:
        accumulator.evict(watermark_us)
    stored: dict[tuple[bytes, str, int], WindowState] = {}
    seen: set[str] = set()
    funnel: Funnel = {}
    for batch in split(feed, cuts):
        fresh: list[ListenerRequest] = []
        for request in batch:
            if request.request_id in seen:
                add_funnels(
                    funnel, {(request.episode_id, request.time_us, Outcome.DUPLICATE, None): 1}
                )
            else:
                seen.add(request.request_id)
                fresh.append(request)
        delta = accumulator.apply(fresh, MEDIA)
        changes = funnel_changes(fresh, arrivals(fresh, delta, rules), delta, same)
        assert all(n != 0 for n in changes.values())
        add_funnels(funnel, changes)
        assert all(n > 0 for n in funnel.values()), "a bucket went negative"
        if persist:
            for gone in delta.dropped_windows:
                stored.pop((gone.listener_id, gone.episode_id, gone.start_us), None)
            for changed in delta.changed_windows:
                stored[(changed.listener_id, changed.episode_id, changed.start_us)] = (
                    WindowState.from_dict(changed.to_dict())
                )
            accumulator = DownloadAccumulator(rules)
            if watermark_us is not None:
                accumulator.evict(watermark_us)
            accumulator.load(WindowState.from_dict(s.to_dict()) for s in stored.values())
    return funnel


@settings(max_examples=150)
@given(traffic(), st.data(), any_settings)
def test_funnel_partitions_every_request_and_its_downloads_are_the_counted_ones(
    requests: list[ListenerRequest], data: st.DataObject, window: CountingSettings
) -> None:
    repeats = data.draw(st.lists(st.sampled_from(requests), max_size=10)) if requests else []
    funnel = funnel_of_requests(requests + repeats, MEDIA, window)
    assert sum(funnel.values()) == len(requests) + len(repeats)
    assert all(n > 0 for n in funnel.values())
    totals = by_outcome(funnel)
    assert totals[Outcome.DUPLICATE] == len(repeats)
    expected = count(requests, window)
    assert totals[Outcome.FILTERED] == sum(expected.filtered.values())
    assert Counter(
        {(e, t): n for (e, t, o, _), n in funnel.items() if o is Outcome.DOWNLOAD}
    ) == Counter((d.episode_id, d.time_us) for d in expected.downloads)


@settings(max_examples=150)
@given(traffic(), st.data(), any_settings, st.booleans())
def test_incremental_funnel_equals_batch_in_any_order_split_with_resends(
    requests: list[ListenerRequest],
    data: st.DataObject,
    window: CountingSettings,
    persist: bool,
) -> None:
    repeats = data.draw(st.lists(st.sampled_from(requests), max_size=10)) if requests else []
    feed = data.draw(st.permutations(requests + repeats), label="arrival order")
    cuts = data.draw(st.lists(st.integers(0, len(feed)), max_size=6), label="batch cuts")
    # Duplicates are the later arrivals of an id, whichever copy came first.
    assert ingest(feed, cuts, window, persist=persist) == funnel_of_requests(feed, MEDIA, window)


@settings(max_examples=100)
@given(traffic(), st.data(), any_settings)
def test_late_requests_stay_in_the_partition(
    requests: list[ListenerRequest], data: st.DataObject, window: CountingSettings
) -> None:
    watermark = START + data.draw(st.integers(0, 3 * 24 * 60), label="watermark") * MINUTE
    cuts = data.draw(st.lists(st.integers(0, len(requests)), max_size=4), label="batch cuts")
    funnel = ingest(requests, cuts, window, persist=True, watermark_us=watermark)
    assert sum(funnel.values()) == len(requests)
    rules = compile_rules(window)
    accumulator = DownloadAccumulator(rules)
    accumulator.evict(watermark)
    delta = accumulator.apply(requests, MEDIA)
    late = [a for a, _ in arrivals(requests, delta, rules) if a is Arrival.LATE]
    assert by_outcome(funnel)[Outcome.LATE] == len(late) == delta.late_requests


PARTIAL = ListenerRequest.from_raw(
    request_id="partial",
    time_us=START,
    episode_id="small",
    client_ip="203.0.113.1",
    user_agent=APPLE_PODCASTS,
    hasher=HASHER,
    status=206,
    range_header="bytes=0-999",
    bytes_served=1_000,
)
COMPLETE = replace(
    PARTIAL,
    request_id="complete",
    time_us=START + 5,
    status=200,
    range_header="",
    bytes_served=200_000,
)


@pytest.mark.parametrize("window", WINDOW_SETTINGS)
@pytest.mark.parametrize(
    "batches",
    [[[PARTIAL], [COMPLETE]], [[COMPLETE], [PARTIAL]], [[PARTIAL, COMPLETE]]],
)
def test_a_window_is_one_download_at_its_first_request_in_any_arrival(
    batches: list[list[ListenerRequest]], window: CountingSettings
) -> None:
    """Below the threshold, then completed; or completed, then an earlier request moves
    the download to it: either way one download at the first request, one repeat."""
    feed = [r for batch in batches for r in batch]
    cuts = [len(batches[0])] if len(batches) > 1 else []
    assert ingest(feed, cuts, window) == {
        ("small", START, Outcome.DOWNLOAD, None): 1,
        ("small", START + 5, Outcome.WINDOW_REPEAT, None): 1,
    }
