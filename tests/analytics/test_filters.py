"""Filters: each rule that keeps a request from counting, and the reason it reports."""

from __future__ import annotations

import pytest

from services.analytics.counting import (
    CountingSettings,
    CountingWindow,
    DeviceClass,
    Download,
    FilterReason,
    IpExclusions,
    ListenerRequest,
    RequestFilter,
    compile_rules,
    flag_implausible_volume,
    is_apple_watch,
)

from .support import (
    APPLE_PODCASTS,
    APPLE_WATCH,
    BOT_AGENTS,
    HASHER,
    LISTENER_AGENTS,
    SPOTIFY,
    at,
    ranged,
    request,
)

FILTER = RequestFilter()
EXCLUSIONS = IpExclusions(["203.0.113.0/24"])


def reason(record: ListenerRequest, rules: RequestFilter = FILTER) -> FilterReason | None:
    return rules.reason(record)


def test_countable_request_has_no_reason() -> None:
    assert reason(request()) is None
    assert reason(ranged(0, 999)) is None


@pytest.mark.parametrize("method", ["HEAD", "head"])
def test_head_request_is_not_counted(method: str) -> None:
    assert reason(request(method=method)) is FilterReason.HEAD_REQUEST


@pytest.mark.parametrize("method", ["POST", "OPTIONS", "PUT"])
def test_method_other_than_get_is_not_counted(method: str) -> None:
    assert reason(request(method=method)) is FilterReason.METHOD_NOT_GET


def test_lowercase_get_counts() -> None:
    assert reason(request(method="get")) is None


@pytest.mark.parametrize("status", [204, 301, 302, 304, 403, 404, 416, 500, 503])
def test_status_other_than_200_and_206_is_not_counted(status: int) -> None:
    assert reason(request(status=status)) is FilterReason.STATUS_NOT_COUNTED


@pytest.mark.parametrize(("status", "served"), [(206, 2), (200, 2), (206, 0)])
def test_probe_range_bytes_0_1_is_not_counted(status: int, served: int) -> None:
    probe = request(status=status, range_header="bytes=0-1", bytes_served=served)
    assert reason(probe) is FilterReason.PROBE_RANGE


def test_malformed_range_on_a_206_is_not_counted() -> None:
    assert reason(request(status=206, range_header="bytes=9-1")) is FilterReason.MALFORMED_RANGE
    # A 200 ignored the header and sent the whole file: it is the body that counts.
    assert reason(request(status=200, range_header="bytes=9-1")) is None


@pytest.mark.parametrize("user_agent", ["", "   ", "-"])
def test_empty_user_agent_is_not_counted(user_agent: str) -> None:
    assert reason(request(ua=user_agent)) is FilterReason.EMPTY_USER_AGENT


@pytest.mark.parametrize("user_agent", BOT_AGENTS)
def test_bots_and_http_libraries_are_not_counted(user_agent: str) -> None:
    assert reason(request(ua=user_agent)) is FilterReason.BOT


@pytest.mark.parametrize(
    "user_agent",
    [
        APPLE_WATCH,
        "atc/1.0 watchOS/10.0 model/Watch6,2 hwp/t8301 build/21R356 (6; dt:257)",
        "Podcasts/1.0 (null)/(null) watchOS/5.0 model/Watch3,4 hwp/t8004 build/16R364 (6; dt:156)",
    ],
)
def test_apple_watch_is_not_counted(user_agent: str) -> None:
    assert is_apple_watch(user_agent)
    assert reason(request(ua=user_agent)) is FilterReason.APPLE_WATCH


@pytest.mark.parametrize(
    "user_agent",
    ["atc/1.0 iOS/16.5", "Spotify/8.8 watchOS/9.0 (Watch6,2)", "(null)/(null) tvOS/16"],
)
def test_apple_watch_rule_is_exact(user_agent: str) -> None:
    assert not is_apple_watch(user_agent)


def test_tenant_excluded_user_agents_are_case_insensitive_substrings() -> None:
    rules = RequestFilter(excluded_user_agents=["  ShowPrep ", "spotify/8.8.20", ""])
    assert reason(request(ua="Agent showprep/2"), rules) is FilterReason.EXCLUDED_USER_AGENT
    assert reason(request(ua=SPOTIFY), rules) is FilterReason.EXCLUDED_USER_AGENT
    assert reason(request(ua=APPLE_PODCASTS), rules) is None


def test_tenant_excluded_ip_is_not_counted() -> None:
    excluded = ListenerRequest.from_raw(
        request_id="x",
        time_us=at("2024-03-04T10:00:00"),
        episode_id="ep-1",
        client_ip="203.0.113.7",
        user_agent=APPLE_PODCASTS,
        hasher=HASHER,
        exclusions=EXCLUSIONS,
    )
    assert reason(excluded) is FilterReason.EXCLUDED_IP


def test_reason_precedence_request_then_user_agent_then_tenant_lists() -> None:
    assert reason(request(method="HEAD", status=404, ua="curl/8")) is FilterReason.HEAD_REQUEST
    assert reason(request(status=404, range_header="bytes=0-1")) is FilterReason.STATUS_NOT_COUNTED
    assert reason(request(range_header="bytes=0-1", ua="")) is FilterReason.PROBE_RANGE
    rules = RequestFilter(excluded_user_agents=["curl"])
    assert reason(request(ua="curl/8.1"), rules) is FilterReason.BOT


def _download(household: bytes, listener: int, episode: str = "ep-1", hour: int = 10) -> Download:
    return Download(
        listener_id=listener.to_bytes(16, "big"),
        household_id=household,
        episode_id=episode,
        window_start_us=at("2024-03-04T00:00:00"),
        time_us=at(f"2024-03-04T{hour:02}:00:00"),
        app="Unknown",
        device_class=DeviceClass.UNKNOWN,
        os="Unknown",
        country="ZZ",
    )


def test_implausible_volume_per_ip_is_flagged_not_removed() -> None:
    busy, quiet = b"\x01" * 16, b"\x02" * 16
    downloads = [_download(busy, n, hour=n % 24) for n in range(21)]
    downloads += [_download(quiet, n) for n in range(20)]
    downloads += [_download(quiet, 99, episode="ep-2")]
    flags = flag_implausible_volume(downloads, limit=20)
    assert [(f.household_id, f.episode_id, f.downloads) for f in flags] == [(busy, "ep-1", 21)]
    assert flags[0].day_start_us == at("2024-03-04T00:00:00")
    assert len(downloads) == 42


def test_ten_requests_from_six_user_agents_are_not_implausible() -> None:
    downloads = [_download(b"\x01" * 16, n) for n in range(len(LISTENER_AGENTS))]
    assert flag_implausible_volume(downloads) == []


def test_tenants_with_the_same_user_agent_exclusions_share_one_filter_and_cache() -> None:
    utc = compile_rules(CountingSettings())
    rolling = compile_rules(CountingSettings(window=CountingWindow.ROLLING_24H))
    own = compile_rules(CountingSettings(excluded_user_agents=("ShowPrep",)))
    assert utc.filter is rolling.filter
    assert own.filter is not utc.filter
    assert (utc.counting_time_zone, rolling.counting_time_zone) == ("UTC", "")
