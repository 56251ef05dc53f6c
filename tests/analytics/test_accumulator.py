"""The incremental accumulator: deltas per batch, corrections, eviction and persistence."""

from __future__ import annotations

import json

import pytest

from services.analytics.counting import (
    CountingSettings,
    CountingWindow,
    DownloadAccumulator,
    FilterReason,
    WindowState,
    count_downloads,
)

from .support import CURL, MEDIA, SIZE, THRESHOLD, at, ranged, request

UTC_DAY = CountingSettings()
ROLLING = CountingSettings(window=CountingWindow.ROLLING_24H)


def test_reports_the_window_that_became_a_download_in_this_batch() -> None:
    accumulator = DownloadAccumulator(UTC_DAY)
    first = accumulator.apply([ranged(0, THRESHOLD // 2)], MEDIA)
    assert first.downloads_added == []
    assert first.applied_requests == 1
    second = accumulator.apply([ranged(THRESHOLD // 2, THRESHOLD, "2024-03-04T10:05:00")], MEDIA)
    [download] = second.downloads_added
    assert download.time_us == at("2024-03-04T10:00:00")
    assert second.downloads_removed == []


def test_more_requests_for_a_counted_window_report_nothing_new() -> None:
    accumulator = DownloadAccumulator(UTC_DAY)
    accumulator.apply([request()], MEDIA)
    delta = accumulator.apply([request("2024-03-04T18:00:00"), request()], MEDIA)
    assert (delta.downloads_added, delta.downloads_removed, delta.ads_added) == ([], [], [])


def test_ad_completed_in_a_later_batch_is_reported_then() -> None:
    accumulator = DownloadAccumulator(UTC_DAY)
    early = accumulator.apply([ranged(0, THRESHOLD)], MEDIA)
    assert [a.slot_id for a in early.ads_added] == ["pre"]
    later = accumulator.apply([ranged(THRESHOLD + 1, SIZE - 1, "2024-03-04T10:30:00")], MEDIA)
    assert later.downloads_added == []
    assert [a.slot_id for a in later.ads_added] == ["host-read", "mid"]
    assert {a.download for a in later.ads_added} == set(early.downloads_added)


def test_late_earlier_request_moves_the_download_to_its_time() -> None:
    accumulator = DownloadAccumulator(UTC_DAY)
    [counted] = accumulator.apply([request("2024-03-04T10:00:00")], MEDIA).downloads_added
    delta = accumulator.apply([ranged(0, 99, "2024-03-04T06:00:00", country="NL")], MEDIA)
    assert delta.downloads_removed == [counted]
    [moved] = delta.downloads_added
    assert (moved.time_us, moved.country) == (at("2024-03-04T06:00:00"), "NL")
    assert sorted(a.slot_id for a in delta.ads_removed) == ["host-read", "mid", "pre"]
    assert {a.download for a in delta.ads_added} == {moved}


def test_late_request_redraws_rolling_windows() -> None:
    accumulator = DownloadAccumulator(ROLLING)
    before = accumulator.apply(
        [request("2024-03-04T10:00:00"), request("2024-03-05T06:00:00")], MEDIA
    )
    assert [d.window_start_us for d in before.downloads_added] == [at("2024-03-04T10:00:00")]
    delta = accumulator.apply([request("2024-03-04T00:00:00")], MEDIA)
    assert delta.downloads_removed == before.downloads_added
    assert [d.window_start_us for d in delta.downloads_added] == [
        at("2024-03-04T00:00:00"),
        at("2024-03-05T06:00:00"),
    ]
    assert [w.start_us for w in delta.dropped_windows] == [at("2024-03-04T10:00:00")]


def test_filtered_requests_are_counted_per_reason() -> None:
    delta = DownloadAccumulator(UTC_DAY).apply(
        [request(method="HEAD"), request(ua=CURL), request(ua=CURL), request()], MEDIA
    )
    assert delta.filtered == {FilterReason.HEAD_REQUEST: 1, FilterReason.BOT: 2}
    assert delta.applied_requests == 1


@pytest.mark.parametrize("settings", [UTC_DAY, ROLLING], ids=["utc-day", "rolling-24h"])
def test_evicted_windows_make_later_requests_for_them_late(settings: CountingSettings) -> None:
    accumulator = DownloadAccumulator(settings)
    accumulator.apply([request("2024-03-04T10:00:00"), request("2024-03-05T10:00:00")], MEDIA)
    evicted = accumulator.evict(at("2024-03-05T12:00:00"))
    assert [w.start_us for w in evicted] == [
        at("2024-03-04T00:00:00") if settings is UTC_DAY else at("2024-03-04T10:00:00")
    ]
    assert len(accumulator) == 1
    late = accumulator.apply([request("2024-03-04T12:00:00", ip="198.51.100.1")], MEDIA)
    assert (late.late_requests, late.downloads_added) == (1, [])
    open_window = accumulator.apply([request("2024-03-05T11:00:00")], MEDIA)
    assert open_window.late_requests == 0
    accumulator.evict(at("2024-03-01T00:00:00"))
    assert accumulator.apply(
        [request("2024-03-04T12:00:00", ip="198.51.100.2")], MEDIA
    ).late_requests


@pytest.mark.parametrize("settings", [UTC_DAY, ROLLING], ids=["utc-day", "rolling-24h"])
def test_restored_state_continues_exactly(settings: CountingSettings) -> None:
    first = [
        ranged(0, THRESHOLD // 2, "2024-03-04T09:00:00"),
        request("2024-03-04T10:00:00", ip="198.51.100.1"),
    ]
    second = [
        ranged(THRESHOLD // 2, SIZE - 1, "2024-03-04T09:30:00"),
        request("2024-03-04T08:00:00", ip="198.51.100.1"),
    ]
    original = DownloadAccumulator(settings)
    original.apply(first, MEDIA)
    snapshot = json.dumps([w.to_dict() for w in original.windows()])
    restored = DownloadAccumulator(settings)
    restored.load(WindowState.from_dict(d) for d in json.loads(snapshot))
    assert [w.to_dict() for w in restored.windows()] == [w.to_dict() for w in original.windows()]
    expected, got = original.apply(second, MEDIA), restored.apply(second, MEDIA)
    assert got.downloads_added == expected.downloads_added
    assert got.downloads_removed == expected.downloads_removed
    assert got.ads_added == expected.ads_added


def test_window_states_of_another_setting_are_refused() -> None:
    calendar = DownloadAccumulator(UTC_DAY)
    calendar.apply([request()], MEDIA)
    with pytest.raises(ValueError, match="different counting window"):
        DownloadAccumulator(ROLLING).load(calendar.windows())


def test_changed_windows_are_the_ones_to_persist() -> None:
    accumulator = DownloadAccumulator(UTC_DAY)
    accumulator.apply([request(), request(ip="198.51.100.1")], MEDIA)
    delta = accumulator.apply([request("2024-03-04T11:00:00")], MEDIA)
    [changed] = delta.changed_windows
    assert changed.counted
    assert changed.to_dict()["first_us"] == at("2024-03-04T10:00:00")


def test_accumulator_matches_the_batch_function_on_a_day_of_traffic() -> None:
    requests = [
        request(f"2024-03-04T{h:02}:{m:02}:00", ip=f"198.51.100.{ip}")
        if (h + m + ip) % 3
        else ranged(
            0, THRESHOLD * ((h + ip) % 3), f"2024-03-04T{h:02}:{m:02}:00", ip=f"198.51.100.{ip}"
        )
        for h in range(0, 24, 5)
        for m in (0, 30)
        for ip in range(6)
    ]
    accumulator = DownloadAccumulator(UTC_DAY)
    added = [
        d
        for batch in (requests[::2], requests[1::2])
        for d in accumulator.apply(batch, MEDIA).downloads_added
    ]
    assert sorted(added, key=lambda d: d.sort_key()) == list(
        count_downloads(requests, MEDIA).downloads
    )


@pytest.mark.parametrize("settings", [UTC_DAY, ROLLING], ids=["utc-day", "rolling-24h"])
def test_simultaneous_first_request_in_a_later_batch_breaks_the_tie(
    settings: CountingSettings,
) -> None:
    accumulator = DownloadAccumulator(settings)
    [first] = accumulator.apply([request(country="US")], MEDIA).downloads_added
    delta = accumulator.apply([request(country="CA")], MEDIA)
    assert delta.downloads_removed == [first]
    assert [(d.time_us, d.country) for d in delta.downloads_added] == [(first.time_us, "CA")]


@pytest.mark.parametrize("settings", [UTC_DAY, ROLLING], ids=["utc-day", "rolling-24h"])
def test_resent_batch_changes_no_state(settings: CountingSettings) -> None:
    batch = [ranged(0, 999), ranged(1000, THRESHOLD), request("2024-03-04T12:00:00")]
    accumulator = DownloadAccumulator(settings)
    accumulator.apply(batch, MEDIA)
    before = [w.to_dict() for w in accumulator.windows()]
    delta = accumulator.apply(batch, MEDIA)
    assert [w.to_dict() for w in accumulator.windows()] == before
    assert delta.downloads_added == delta.downloads_removed == []
    assert delta.ads_added == []


def test_window_ending_at_the_watermark_is_evicted_and_late() -> None:
    accumulator = DownloadAccumulator(UTC_DAY)
    accumulator.apply([request("2024-03-04T10:00:00")], MEDIA)
    assert len(accumulator.evict(at("2024-03-05T00:00:00"))) == 1
    delta = accumulator.apply([request("2024-03-04T23:59:59", ip="198.51.100.1")], MEDIA)
    assert delta.late_requests == 1
