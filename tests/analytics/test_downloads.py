"""The download rules, through the batch function: threshold, uniqueness, windows, time."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.analytics.counting import (
    CountingSettings,
    CountingWindow,
    CountResult,
    DeviceClass,
    EpisodeMedia,
    FilterReason,
    ListenerRequest,
    count_downloads,
)

from .support import (
    APPLE_PODCASTS,
    BITRATE,
    CHROME,
    CURL,
    EPISODE,
    ID3,
    LISTENER_AGENTS,
    MEDIA,
    SIZE,
    SPOTIFY,
    THRESHOLD,
    at,
    ranged,
    request,
)

ROLLING = CountingSettings(window=CountingWindow.ROLLING_24H)


UTC_DAY = CountingSettings()


def count(
    requests: Sequence[ListenerRequest],
    settings: CountingSettings = UTC_DAY,
    media: dict[str, EpisodeMedia] | None = None,
) -> CountResult:
    return count_downloads(requests, MEDIA if media is None else media, settings)


def n(requests: Sequence[ListenerRequest], media: dict[str, EpisodeMedia] | None = None) -> int:
    return len(count(requests, media=media).downloads)


def test_threshold_is_id3_header_plus_one_minute_of_audio() -> None:
    assert EPISODE.threshold_bytes == ID3 + 960_000 == THRESHOLD
    # 128 kbps is 16,000 bytes a second; a fractional byte rounds up.
    odd = EpisodeMedia("e", id3_size_bytes=0, bitrate_bps=127_999, duration_s=600)
    assert odd.threshold_bytes == 959_993


def test_download_needs_the_threshold_bytes_delivered() -> None:
    assert n([ranged(0, THRESHOLD - 2)]) == 0
    assert n([ranged(0, THRESHOLD - 1)]) == 1


def test_partial_requests_add_up_to_the_threshold() -> None:
    half = THRESHOLD // 2
    assert n([ranged(0, half - 1), ranged(half, THRESHOLD - 1, "2024-03-04T11:00:00")]) == 1


def test_overlapping_ranges_are_counted_once() -> None:
    overlapping = [ranged(0, THRESHOLD // 2), ranged(0, THRESHOLD // 2), ranged(10, THRESHOLD - 10)]
    assert n(overlapping) == 0


def test_threshold_bytes_may_come_from_anywhere_in_the_file() -> None:
    assert n([ranged(SIZE - THRESHOLD, SIZE - 1)]) == 1


def test_bytes_served_not_bytes_requested_count() -> None:
    aborted = request(status=206, range_header="bytes=0-", bytes_served=THRESHOLD - 1)
    assert n([aborted]) == 0


def test_probe_then_streaming_counts_once() -> None:
    probe = request(status=206, range_header="bytes=0-1", bytes_served=2)
    assert n([probe, ranged(0, THRESHOLD)]) == 1


@pytest.mark.parametrize(
    "media",
    [
        EpisodeMedia("ep-1", SIZE, ID3, BITRATE, duration_s=45.0),
        EpisodeMedia("ep-1", SIZE, ID3, bitrate_bps=0, duration_s=1800.0),
        EpisodeMedia("ep-1", SIZE, id3_size_bytes=None, bitrate_bps=BITRATE, duration_s=1800.0),
        EpisodeMedia("ep-1", THRESHOLD, ID3, BITRATE),
    ],
    ids=["under-a-minute", "bitrate-unknown", "id3-size-unknown", "file-not-above-threshold"],
)
def test_short_or_unmeasured_episode_needs_the_complete_file(media: EpisodeMedia) -> None:
    assert media.threshold_bytes is None
    size = media.size_bytes
    facts = {"ep-1": media}
    assert n([ranged(0, size - 2)], media=facts) == 0
    assert n([ranged(0, size // 2), ranged(size // 2 + 1, size - 1)], media=facts) == 1
    assert n([request(bytes_served=size - 1)], media=facts) == 0
    assert n([request(bytes_served=size)], media=facts) == 1


def test_probe_bytes_are_not_delivered_bytes() -> None:
    short = {"ep-1": EpisodeMedia("ep-1", 40_000, ID3, BITRATE, duration_s=20.0)}
    probe = request(status=206, range_header="bytes=0-1", bytes_served=2)
    assert n([probe, ranged(2, 39_999)], media=short) == 0
    assert n([probe, ranged(0, 39_999)], media=short) == 1


def test_unknown_size_needs_a_complete_200_response() -> None:
    facts = {"ep-1": EpisodeMedia("ep-1", bitrate_bps=BITRATE)}
    assert n([request(bytes_served=5)], media=facts) == 1
    assert n([ranged(0, 50_000_000)], media=facts) == 0
    assert n([request(range_header="bytes=100-", bytes_served=10)], media=facts) == 1


def test_episode_without_media_facts_counts_complete_responses_only() -> None:
    assert n([request(episode="deleted")]) == 1
    assert n([ranged(0, SIZE - 1, episode="deleted")]) == 0


def test_play_pause_play_in_a_window_is_one_download() -> None:
    plays = [
        ranged(0, THRESHOLD, "2024-03-04T08:00:00"),
        ranged(THRESHOLD + 1, 2 * THRESHOLD, "2024-03-04T08:20:00"),
        request("2024-03-04T19:00:00"),
    ]
    assert n(plays) == 1


def test_ten_requests_from_six_user_agents_behind_one_ip_are_six_downloads() -> None:
    agents = [*LISTENER_AGENTS, *LISTENER_AGENTS[:4]]
    requests = [request(f"2024-03-04T{10 + i:02}:00:00", ua=ua) for i, ua in enumerate(agents)]
    result = count(requests)
    assert len(result.downloads) == 6
    assert len({d.listener_id for d in result.downloads}) == 6
    assert len({d.household_id for d in result.downloads}) == 1


def test_each_episode_is_counted_separately() -> None:
    assert n([request(), request(episode="ep-2")]) == 2


WORKED_EXAMPLE = [
    "2024-03-04T22:00:00",  # Monday
    "2024-03-05T03:00:00",
    "2024-03-05T22:15:00",
    "2024-03-06T23:15:00",
]


@pytest.mark.parametrize(
    ("settings", "expected_windows"),
    [
        (
            UTC_DAY,
            ["2024-03-04T00:00:00", "2024-03-05T00:00:00", "2024-03-06T00:00:00"],
        ),
        (
            ROLLING,
            ["2024-03-04T22:00:00", "2024-03-05T22:15:00", "2024-03-06T23:15:00"],
        ),
        (
            CountingSettings(window=CountingWindow.TENANT_DAY, time_zone="America/New_York"),
            ["2024-03-04T05:00:00", "2024-03-05T05:00:00", "2024-03-06T05:00:00"],
        ),
    ],
    ids=["utc-day", "rolling-24h", "tenant-day"],
)
def test_worked_example_from_the_architecture_is_three_downloads(
    settings: CountingSettings, expected_windows: list[str]
) -> None:
    result = count([request(t) for t in WORKED_EXAMPLE], settings)
    assert [d.window_start_us for d in result.downloads] == [at(t) for t in expected_windows]


def test_rolling_window_is_24_hours_from_the_first_request() -> None:
    times = ["2024-03-04T10:00:00", "2024-03-05T09:59:59", "2024-03-05T10:00:00"]
    result = count([request(t) for t in times], ROLLING)
    assert [d.time_us for d in result.downloads] == [at(times[0]), at(times[2])]


def test_download_time_and_breakdown_are_the_first_request_of_the_window() -> None:
    first = ranged(0, 999, "2024-03-04T08:00:00", country="de")
    rest = ranged(1000, THRESHOLD, "2024-03-04T09:30:00", country="FR")
    [download] = count([rest, first]).downloads
    assert download.time_us == at("2024-03-04T08:00:00")
    assert download.window_start_us == at("2024-03-04T00:00:00")
    assert (download.app, download.device_class, download.os) == (
        "Apple Podcasts",
        DeviceClass.MOBILE,
        "iOS",
    )
    assert download.country == "DE"


def test_simultaneous_first_requests_break_ties_by_country() -> None:
    one = request(country="US")
    two = request(country="CA")
    assert count([one, two]).downloads[0].country == "CA"
    assert count([two, one]).downloads[0].country == "CA"


def test_unknown_country_is_zz() -> None:
    assert count([request()]).downloads[0].country == "ZZ"


def test_filtered_requests_neither_count_nor_open_windows() -> None:
    head = request("2024-03-04T07:00:00", method="HEAD")
    result = count([head, request("2024-03-04T10:00:00"), request(ua=CURL)])
    assert [d.time_us for d in result.downloads] == [at("2024-03-04T10:00:00")]
    assert result.filtered == {FilterReason.HEAD_REQUEST: 1, FilterReason.BOT: 1}


def test_repeated_request_ids_count_once() -> None:
    once = request(request_id="same", ua=CHROME)
    again = request("2024-03-04T12:00:00", request_id="same", ua=SPOTIFY)
    result = count([once, again])
    assert result.duplicates == 1
    assert [d.listener_id for d in result.downloads] == [once.listener_id]


def test_tenant_excluded_user_agents_apply_to_the_batch() -> None:
    settings = CountingSettings(excluded_user_agents=("Spotify",))
    result = count([request(ua=SPOTIFY), request(ua=APPLE_PODCASTS)], settings)
    assert len(result.downloads) == 1
    assert result.filtered == {FilterReason.EXCLUDED_USER_AGENT: 1}


def test_download_exposes_times_as_datetimes() -> None:
    [download] = count([request("2024-03-04T10:00:00")]).downloads
    assert download.time.isoformat() == "2024-03-04T10:00:00+00:00"
    assert download.window_start.isoformat() == "2024-03-04T00:00:00+00:00"
