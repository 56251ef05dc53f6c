"""Late requests: one counts if and only if it arrives within grace of its window's end.

Ingestion counts with the watermark ``arrival - grace`` (72 hours): it evicts, then
loads the stored windows of the listener, then applies the batch. The window's end
is worked out here from the calendar, independently of the counting code: the next
midnight (UTC, or the tenant's zone across DST changes), or 24 hours after the
window's first request for rolling windows.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from services.analytics.counting import (
    DAY_US,
    CountingSettings,
    CountingWindow,
    DownloadAccumulator,
    from_us,
    to_us,
)

from .support import MEDIA, THRESHOLD, at, ranged, request

HOUR_US = DAY_US // 24
GRACE_US = 72 * HOUR_US
ZONE = "America/New_York"
WINDOWS = {
    "utc-day": CountingSettings(),
    "tenant-day": CountingSettings(window=CountingWindow.TENANT_DAY, time_zone=ZONE),
    "rolling-24h": CountingSettings(window=CountingWindow.ROLLING_24H),
}
# Days around both 2024 DST changes in New York (a 23-hour and a 25-hour day).
SPRING = (at("2024-03-08T00:00:00"), at("2024-03-13T00:00:00"))
AUTUMN = (at("2024-11-01T00:00:00"), at("2024-11-06T00:00:00"))


def day_end(time_us: int, zone: str) -> int:
    local = from_us(time_us).astimezone(ZoneInfo(zone))
    return to_us(datetime.combine(local.date() + timedelta(days=1), time(), ZoneInfo(zone)))


def window_end(name: str, first_us: int | None, time_us: int) -> int:
    """End of the window a request at ``time_us`` falls in, after an earlier request
    of the same listener at ``first_us`` (if any; it only matters to rolling windows,
    where it may have opened the window)."""
    if name == "rolling-24h":
        if first_us is not None and time_us < first_us + DAY_US:
            return first_us + DAY_US
        return time_us + DAY_US
    return day_end(time_us, ZONE if name == "tenant-day" else "UTC")


times = st.one_of(st.integers(*SPRING), st.integers(*AUTUMN))


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(WINDOWS)),
    request_us=times,
    earlier_us=st.one_of(st.none(), st.integers(0, 30 * HOUR_US)),
    data=st.data(),
)
def test_a_request_counts_iff_it_arrives_within_grace_of_its_window_end(
    name: str, request_us: int, earlier_us: int | None, data: st.DataObject
) -> None:
    settings_ = WINDOWS[name]
    # The listener's earlier request, too short for a download, counted in time: its
    # window is stored, as ingestion keeps it, and is loaded with the late request.
    first_us = None if earlier_us is None else request_us - earlier_us
    stored = DownloadAccumulator(settings_)
    if first_us is not None:
        stored.apply([ranged(0, THRESHOLD // 2, first_us)], MEDIA)
    end = window_end(name, first_us, request_us)
    arrival = data.draw(
        st.one_of(
            st.integers(request_us, request_us + 200 * HOUR_US),
            st.integers(end + GRACE_US - 2, end + GRACE_US + 2),
        ),
        label="arrival",
    )
    watermark = arrival - GRACE_US

    ingesting = DownloadAccumulator(settings_)
    ingesting.evict(watermark)
    ingesting.load(stored.windows())
    delta = ingesting.apply([request(request_us)], MEDIA)

    on_time = arrival < end + GRACE_US
    assert len(delta.downloads_added) == (1 if on_time else 0)
    assert delta.late_requests == (0 if on_time else 1)


def test_rolling_request_73_hours_old_opens_a_window_still_in_grace() -> None:
    now = at("2024-03-10T12:00:00")
    accumulator = DownloadAccumulator(WINDOWS["rolling-24h"])
    accumulator.evict(now - GRACE_US)
    delta = accumulator.apply([request(now - 73 * HOUR_US)], MEDIA)
    assert (len(delta.downloads_added), delta.late_requests) == (1, 0)
    older = accumulator.apply([request(now - 97 * HOUR_US, ip="198.51.100.9")], MEDIA)
    assert (older.downloads_added, older.late_requests) == ([], 1)


def test_rolling_request_in_a_window_closed_before_the_watermark_is_late() -> None:
    now = at("2024-03-10T12:00:00")
    stored = DownloadAccumulator(WINDOWS["rolling-24h"])
    stored.apply([ranged(0, 1_000, now - 110 * HOUR_US)], MEDIA)
    accumulator = DownloadAccumulator(WINDOWS["rolling-24h"])
    accumulator.evict(now - GRACE_US)
    accumulator.load(stored.windows())
    # 90 hours old: alone it would open a window ending 66 hours ago, but it falls in
    # the listener's window opened 110 hours ago, which closed 86 hours ago.
    delta = accumulator.apply([request(now - 90 * HOUR_US)], MEDIA)
    assert (delta.downloads_added, delta.late_requests) == ([], 1)
