"""Metrics reports without a database: validation, cube choice, assembly, CSV, spans."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from datasketches import hll_sketch

from services.analytics.counting.windows import CountingWindow
from services.analytics.live import counters
from services.analytics.peers import TenantClock
from services.analytics.queries.buckets import Granularity
from services.analytics.queries.metrics import release_span
from services.analytics.queries.reports import (
    EXPORT_LIMITS,
    QUERY_LIMITS,
    CountRow,
    Dimension,
    Methodology,
    Metric,
    MetricsQuery,
    SketchRow,
    Source,
    assemble,
    listeners_estimate,
    methodology,
    plan_query,
    render_csv,
)
from services.shared.errors import InvalidArgument

BERLIN = TenantClock("Europe/Berlin", CountingWindow.UTC_DAY)
START = datetime(2024, 6, 1, tzinfo=UTC)
URL = "https://example.test/methodology"
LISTS = "opawg/user-agents-v2@0123abc+podmesh-overlay.1"


def query(**overrides: object) -> MetricsQuery:
    fields: dict[str, object] = {"start": START, "end": START + timedelta(days=3)}
    fields.update(overrides)
    return MetricsQuery(**fields)  # type: ignore[arg-type]


def violations(q: MetricsQuery, clock: TenantClock = BERLIN) -> list[str]:
    with pytest.raises(InvalidArgument) as error:
        plan_query(q, clock, QUERY_LIMITS)
    return [v.field for v in error.value.violations]


def sketch(*listeners: str) -> bytes:
    s = hll_sketch(12)
    for listener in listeners:
        s.update(listener)
    return bytes(s.serialize_compact())


def method(bucket_zone: str = "UTC") -> Methodology:
    return methodology(BERLIN, bucket_zone, datetime(2024, 6, 10, 12, tzinfo=UTC), URL, LISTS)


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"start": None, "end": None}, ["start_time", "end_time"]),
        ({"end": START}, ["end_time"]),
        ({"end": START + timedelta(days=401)}, ["end_time"]),
        ({"end": START + timedelta(days=32), "granularity": Granularity.HOUR}, ["end_time"]),
        (
            {"granularity": 9, "breakdown": 42, "metrics": (1, 7)},
            ["granularity", "breakdown", "metrics[1]"],
        ),
        ({"time_zone": "Mars/Base"}, ["time_zone"]),
        ({"breakdown": Dimension.APP, "breakdown_limit": 101}, ["breakdown_limit"]),
        ({"breakdown_limit": -1}, ["breakdown_limit"]),
        ({"country_codes": ("DE", "Germany")}, ["country_codes[1]"]),
        ({"device_classes": ("phone",)}, ["device_classes[0]"]),
        ({"apps": ("",)}, ["apps[0]"]),
        ({"episode_ids": tuple(uuid.uuid4() for _ in range(501))}, ["episode_ids"]),
        ({"metrics": (Metric.LISTENERS,), "breakdown": Dimension.APP}, ["metrics"]),
        ({"metrics": (Metric.LISTENERS,), "apps": ("Overcast",)}, ["metrics"]),
        ({"metrics": (Metric.LISTENERS,), "time_zone": "Asia/Tokyo"}, ["time_zone"]),
        ({"metrics": (Metric.LISTENERS,), "granularity": Granularity.HOUR}, ["time_zone"]),
        ({"breakdown": Dimension.AD_SLOT}, ["metrics"]),
        (
            {"breakdown": Dimension.AD_SLOT, "metrics": (3,), "time_zone": "Asia/Tokyo"},
            ["time_zone"],
        ),
        ({"time_zone": "Asia/Kolkata"}, ["time_zone"]),
    ],
)
def test_invalid_queries_name_their_fields(overrides: dict[str, object], fields: list[str]) -> None:
    assert violations(query(**overrides)) == fields


def test_the_tenants_zone_is_the_default_and_reads_the_local_daily_cube() -> None:
    plan = plan_query(query(), BERLIN, QUERY_LIMITS)
    assert plan.zone_name == "Europe/Berlin"
    assert (plan.source, plan.cube_zone) == (Source.DAILY, "local")
    assert plan.metrics == (Metric.DOWNLOADS,)
    assert plan.breakdown_limit == 10
    # The tenant's own half-hour zone is fine for days: its daily cube has them.
    india = TenantClock("Asia/Kolkata", CountingWindow.TENANT_DAY)
    assert plan_query(query(), india, QUERY_LIMITS).cube_zone == "local"


@pytest.mark.parametrize(
    ("overrides", "source", "cube_zone"),
    [
        ({"time_zone": "UTC"}, Source.DAILY, "UTC"),
        ({"time_zone": "Etc/UTC", "granularity": Granularity.MONTH}, Source.DAILY, "UTC"),
        ({"time_zone": "America/New_York"}, Source.HOURLY, None),
        ({"granularity": Granularity.HOUR}, Source.HOURLY, None),
        ({"breakdown": Dimension.APP}, Source.DAILY_DIMENSION, "local"),
        ({"breakdown": Dimension.APP, "apps": ("Overcast",)}, Source.DAILY_DIMENSION, "local"),
        ({"breakdown": Dimension.APP, "country_codes": ("DE",)}, Source.HOURLY, None),
        ({"country_codes": ("DE",)}, Source.DAILY_DIMENSION, "local"),
        ({"breakdown": Dimension.EPISODE, "apps": ("x",)}, Source.DAILY_DIMENSION, "local"),
        ({"apps": ("x",), "country_codes": ("DE",)}, Source.HOURLY, None),
        ({"breakdown": Dimension.AD_SLOT, "metrics": (3,)}, Source.DAILY_AD_SLOT, "local"),
    ],
)
def test_the_cheapest_cube_that_can_answer_is_chosen(
    overrides: dict[str, object], source: Source, cube_zone: str | None
) -> None:
    plan = plan_query(query(**overrides), BERLIN, QUERY_LIMITS)
    assert (plan.source, plan.cube_zone) == (source, cube_zone)


def test_unknown_filter_labels_also_match_the_stored_empty_value() -> None:
    plan = plan_query(
        query(country_codes=("zz", "de"), breakdown=Dimension.COUNTRY), BERLIN, QUERY_LIMITS
    )
    assert plan.filters[Dimension.COUNTRY] == ("", "DE", "ZZ")


def test_export_limits_are_larger() -> None:
    plan = plan_query(query(breakdown=Dimension.APP), BERLIN, EXPORT_LIMITS)
    assert plan.breakdown_limit == 1000
    with pytest.raises(InvalidArgument):
        plan_query(query(breakdown=Dimension.APP, breakdown_limit=10_001), BERLIN, EXPORT_LIMITS)


def test_top_values_are_kept_the_rest_is_other_and_empty_buckets_are_zero() -> None:
    plan = plan_query(
        query(
            time_zone="UTC",
            breakdown=Dimension.APP,
            breakdown_limit=2,
            metrics=(Metric.DOWNLOADS, Metric.ADS_DELIVERED),
        ),
        BERLIN,
        QUERY_LIMITS,
    )
    rows = [
        CountRow(0, "Overcast", 5, 1),
        CountRow(0, "", 7, 0),
        CountRow(1, "Spotify", 9, 2),
        CountRow(1, "Pocket Casts", 1, 0),
        CountRow(2, "Overcast", 1, 1),
    ]
    report = assemble(plan, rows, [], method())
    # Totals: Spotify 9, Unknown 7, Overcast 6, Pocket Casts 1.
    assert [(p.dimension_value, p.downloads, p.ads_delivered) for p in report.totals] == [
        ("Spotify", 9, 2),
        ("Unknown", 7, 0),
        ("other", 7, 2),
    ]
    assert [(p.bucket_start.day, p.dimension_value, p.downloads) for p in report.points] == [
        (1, "Spotify", 0),
        (1, "Unknown", 7),
        (1, "other", 5),
        (2, "Spotify", 9),
        (2, "Unknown", 0),
        (2, "other", 1),
        (3, "Spotify", 0),
        (3, "Unknown", 0),
        (3, "other", 1),
    ]
    assert all(p.listeners is None for p in report.points)


def test_without_a_breakdown_every_bucket_has_a_point() -> None:
    plan = plan_query(query(time_zone="UTC"), BERLIN, QUERY_LIMITS)
    report = assemble(plan, [CountRow(1, "", 4, 9)], [], method())
    assert [(p.dimension_value, p.downloads, p.ads_delivered) for p in report.points] == [
        ("", 0, None),
        ("", 4, None),
        ("", 0, None),
    ]
    assert [p.downloads for p in report.totals] == [4]
    assert report.totals[0].bucket_start == START


def test_listeners_are_unions_not_sums() -> None:
    podcast_a, podcast_b = str(uuid.uuid4()), str(uuid.uuid4())
    plan = plan_query(
        query(
            time_zone="UTC",
            metrics=(Metric.LISTENERS, Metric.DOWNLOADS),
            breakdown=Dimension.PODCAST,
            breakdown_limit=1,
        ),
        BERLIN,
        QUERY_LIMITS,
    )
    sketches = [
        SketchRow(0, podcast_a, sketch("ann", "bob")),
        SketchRow(0, podcast_a, sketch("bob", "cy")),
        SketchRow(1, podcast_a, sketch("ann")),
        SketchRow(1, podcast_b, sketch("dee", "eve", "fay", "gus")),
    ]
    report = assemble(plan, [CountRow(0, podcast_a, 4, 0)], sketches, method())
    # Ranked by listeners (the first metric): B has 4, A has 3 over the range.
    assert [(p.dimension_value, p.listeners, p.downloads) for p in report.totals] == [
        (podcast_b, 4, 0),
        ("other", 3, 4),
    ]
    by_bucket = {(p.bucket_start.day, p.dimension_value): p.listeners for p in report.points}
    assert by_bucket == {
        (1, podcast_b): 0,
        (1, "other"): 3,
        (2, podcast_b): 4,
        (2, "other"): 1,
        (3, podcast_b): 0,
        (3, "other"): 0,
    }


def test_hll_estimates_are_exact_for_small_sets_and_close_for_large() -> None:
    assert listeners_estimate([]) == 0
    assert listeners_estimate([sketch(*(f"l{i}" for i in range(300)))]) == 300
    halves = [
        sketch(*(f"l{i}" for i in range(0, 20_000))),
        sketch(*(f"l{i}" for i in range(10_000, 30_000))),
    ]
    assert abs(listeners_estimate(halves) - 30_000) < 30_000 * 0.05


def test_csv_has_the_methodology_in_comments_and_one_row_per_point() -> None:
    plan = plan_query(
        query(
            end=START + timedelta(days=2),
            breakdown=Dimension.APP,
            metrics=(Metric.ADS_DELIVERED, Metric.DOWNLOADS),
        ),
        BERLIN,
        QUERY_LIMITS,
    )
    rows = [CountRow(0, 'Pod, "the" app', 3, 1), CountRow(1, "Overcast", 2, 0)]
    text = render_csv(assemble(plan, rows, [], method(plan.zone_name)), plan)
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert comments[1] == "# guideline: IAB Tech Lab Podcast Measurement Technical Guidelines v2.2"
    assert "# counting window: calendar day in UTC" in comments
    assert "# bucket time zone: Europe/Berlin" in comments
    assert f"# methodology: {URL}" in comments
    assert f"# user agent lists: {LISTS}" in comments
    data = list(
        csv.reader(
            io.StringIO("\n".join(line for line in text.splitlines() if not line.startswith("#")))
        )
    )
    assert data[0] == ["bucket_start_time", "app", "ads_delivered", "downloads"]
    assert data[1] == ["2024-06-01T00:00:00+02:00", 'Pod, "the" app', "1", "3"]
    assert data[2] == ["2024-06-01T00:00:00+02:00", "Overcast", "0", "0"]
    # Berlin days 1, 2 and 3 June: the range ends at 02:00 on the 3rd there.
    assert len(data) == 1 + 3 * 2


def test_complete_until_follows_the_counting_window() -> None:
    now = datetime(2024, 6, 10, 12, 30, tzinfo=UTC)
    local = TenantClock("America/New_York", CountingWindow.TENANT_DAY)
    rolling = TenantClock("America/New_York", CountingWindow.ROLLING_24H)
    assert methodology(BERLIN, "UTC", now, URL, LISTS).complete_until == datetime(
        2024, 6, 10, tzinfo=UTC
    )
    assert methodology(local, "UTC", now, URL, LISTS).complete_until == datetime(
        2024, 6, 10, 4, tzinfo=UTC
    )
    assert methodology(local, "UTC", now, URL, LISTS).counting_time_zone == "America/New_York"
    assert methodology(rolling, "UTC", now, URL, LISTS).complete_until == now - timedelta(days=1)
    assert methodology(rolling, "UTC", now, URL, LISTS).counting_time_zone == ""


def test_release_spans_split_into_hours_and_whole_days() -> None:
    episode = uuid.uuid4()
    published = datetime(2024, 6, 1, 9, 45, tzinfo=UTC)
    week = release_span(episode, published, 7)
    assert (week.hour_start, week.hour_split) == (
        datetime(2024, 6, 1, 9, tzinfo=UTC),
        datetime(2024, 6, 2, tzinfo=UTC),
    )
    assert (week.day_start, week.day_end) == (date(2024, 6, 2), date(2024, 6, 8))
    assert (week.hour_resume, week.hour_end) == (
        datetime(2024, 6, 8, tzinfo=UTC),
        datetime(2024, 6, 8, 9, tzinfo=UTC),
    )
    at_midnight = release_span(episode, datetime(2024, 6, 1, tzinfo=UTC), 1)
    assert at_midnight.hour_start == at_midnight.hour_split
    assert (at_midnight.day_start, at_midnight.day_end) == (date(2024, 6, 1), date(2024, 6, 2))
    since = release_span(episode, published, None)
    assert since.hour_resume == since.hour_end
    assert since.day_end > date(9000, 1, 1)


def test_live_scopes_days_and_notifications() -> None:
    podcast, episode = uuid.uuid4(), uuid.uuid4()
    assert counters.scope_token() == "t"
    assert counters.scope_token(podcast) == f"p:{podcast}"
    assert counters.scope_token(podcast, episode) == f"e:{episode}"
    late = datetime(2024, 6, 1, 23, 30, tzinfo=UTC)
    assert counters.counting_day(late, CountingWindow.UTC_DAY, "Europe/Berlin") == date(2024, 6, 1)
    assert counters.counting_day(late, CountingWindow.TENANT_DAY, "Europe/Berlin") == date(
        2024, 6, 2
    )
    tenant = uuid.uuid4()
    assert counters.counters_key(tenant, date(2024, 6, 2)).startswith(f"{{t:{tenant}}}:")
    assert counters.notified_scopes({"type": "message", "data": b'{"scopes": ["t", "p:x"]}'}) == {
        "t",
        "p:x",
    }
    assert counters.notified_scopes({"type": "message", "data": b"not json"}) == frozenset()
    assert counters.notified_scopes(None) == frozenset()
