"""The prefix route's access log entries as listener requests, and the prefix
methodology's filter (property-tested against the byte-verified filter)."""

from __future__ import annotations

import uuid
from typing import cast

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from hypothesis import given
from hypothesis import strategies as st

from services.analytics.counting.filters import FilterReason, RequestFilter
from services.analytics.counting.records import ListenerRequest
from services.analytics.peers import TenantProfile
from services.analytics.prefix.entries import PrefixHit, media_target, prefix_hit
from services.analytics.prefix.methodology import prefix_filter_reason, window_day
from services.analytics.prefix.receiver import (
    UNKNOWN_PREFIX_TTL_S,
    EpisodeSource,
    PrefixRecorder,
)
from services.shared.db import Database
from services.shared.errors import NotFound
from services.shared.measurement_prefix import prefix_id, tenant_of_prefix

TENANT = uuid.UUID("0b6f1d2e-6a43-4c59-9a7e-2f1f5c3d4e5a")
PREFIX = prefix_id(TENANT)
APP = "AppleCoreMedia/1.0.0.20E252 (iPhone; U; CPU OS 16_4 like Mac OS X; en_us)"


def entry(
    path: str,
    *,
    method: int = base_pb2.GET,
    status: int = 302,
    range_header: str = "",
    address: str = "203.0.113.7",
) -> accesslog_pb2.HTTPAccessLogEntry:
    log = accesslog_pb2.HTTPAccessLogEntry()
    log.common_properties.downstream_remote_address.socket_address.address = address
    log.common_properties.start_time.FromSeconds(1_800_000_000)
    log.request.request_method = method
    log.request.path = path
    log.request.user_agent = APP
    log.request.referer = "https://player.example/"
    log.request.request_id = "4b1c7d2e-0000-4000-8000-000000000001"
    if range_header:
        log.request.request_headers["range"] = range_header
    log.response.response_code.value = status
    return log


@given(st.uuids())
def test_a_prefix_id_names_its_tenant(tenant: uuid.UUID) -> None:
    assert tenant_of_prefix(prefix_id(tenant)) == tenant


@pytest.mark.parametrize("text", ["", "pm", "pmshow", PREFIX.upper(), PREFIX + "a", "x" + PREFIX])
def test_other_text_is_no_prefix_id(text: str) -> None:
    assert tenant_of_prefix(text) is None


def test_an_entry_carries_what_envoy_saw() -> None:
    hit = prefix_hit(
        entry(f"/e/{PREFIX}/cdn.example.com/show/ep.mp3?s=rss", range_header="bytes=0-")
    )
    assert hit == PrefixHit(
        tenant_id=TENANT,
        request_id="4b1c7d2e-0000-4000-8000-000000000001",
        time_us=1_800_000_000_000_000,
        client_ip="203.0.113.7",
        user_agent=APP,
        referer="https://player.example/",
        method="GET",
        range_header="bytes=0-",
        status=302,
        media_url="https://cdn.example.com/show/ep.mp3?s=rss",
        media_key="cdn.example.com/show/ep.mp3",
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/e/p/Cdn.Example.com:8443/a.mp3",
            ("p", "https://Cdn.Example.com:8443/a.mp3", "cdn.example.com:8443/a.mp3"),
        ),
        (
            "/e/p/http://cdn.example.com/a.mp3",
            ("p", "http://cdn.example.com/a.mp3", "cdn.example.com/a.mp3"),
        ),
        ("/e/p/HTTPS:/cdn.example.com", ("p", "https://cdn.example.com", "cdn.example.com/")),
        # What the gateway refuses is no listener request either.
        ("/e/p/javascript:alert(1)", None),
        ("/e/p/user@cdn.example.com/a.mp3", None),
        ("/e/p/", None),
        ("/e/p/cdn.example.com/a\\b.mp3", None),
        ("/e/p/cdn.example.com/" + "a" * 2048, None),
        ("/api/v1/podcasts", None),
    ],
)
def test_media_target(path: str, expected: tuple[str, str, str] | None) -> None:
    assert media_target(path) == expected


def test_an_unknown_prefix_is_not_a_listener_request() -> None:
    assert prefix_hit(entry("/e/someone-else/cdn.example.com/a.mp3")) is None


FILTER = RequestFilter()


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, None),
        ({"range_header": "bytes=0-"}, None),
        ({"range_header": "bytes=0-1"}, FilterReason.PROBE_RANGE),
        ({"method": base_pb2.HEAD}, FilterReason.HEAD_REQUEST),
        ({"status": 400}, FilterReason.STATUS_NOT_COUNTED),
    ],
)
def test_prefix_filter(kwargs: dict[str, object], reason: FilterReason | None) -> None:
    hit = prefix_hit(entry(f"/e/{PREFIX}/cdn.example.com/a.mp3", **kwargs))  # type: ignore[arg-type]
    assert hit is not None
    assert prefix_filter_reason(hit, FILTER) == reason


METHODS = st.sampled_from(["GET", "HEAD", "POST", "get"])
RANGES = st.sampled_from(["", "bytes=0-1", "bytes=0-", "bytes=100-200", "bytes=x", "items=0-1"])
AGENTS = st.sampled_from(
    ["", "-", APP, "Googlebot/2.1", "curl/8.0", "Overcast/3.0 (+http://overcast.fm/)"]
)


@given(method=METHODS, range_header=RANGES, user_agent=AGENTS)
def test_a_redirect_is_filtered_as_a_whole_file_200(
    method: str, range_header: str, user_agent: str
) -> None:
    """Property: a 302 passes the prefix filter exactly when the same request served
    as a 200 passes the byte-verified filter; no other status ever passes."""
    hit = PrefixHit(
        TENANT, "r", 0, "203.0.113.7", user_agent, "", method, range_header, 302, "u", "k"
    )
    served = ListenerRequest(
        request_id="r",
        time_us=0,
        episode_id="",
        listener_id=b"",
        household_id=b"",
        user_agent=user_agent,
        method=method,
        status=200,
        range_header=range_header,
    )
    assert prefix_filter_reason(hit, FILTER) == FILTER.reason(served)
    for status in (200, 206, 301, 400, 405, 414):
        other = PrefixHit(
            TENANT, "r", 0, "203.0.113.7", user_agent, "", method, range_header, status, "u", "k"
        )
        assert prefix_filter_reason(other, FILTER) is FilterReason.STATUS_NOT_COUNTED


@given(st.integers(min_value=0, max_value=2**62))
def test_a_window_is_the_utc_day(time_us: int) -> None:
    day = window_day(time_us)
    assert day * 86_400_000_000 <= time_us < (day + 1) * 86_400_000_000


def test_text_postgresql_cannot_store_is_dropped_and_unknown_methods_named() -> None:
    log = entry(f"/e/{PREFIX}/cdn.example.com/a.mp3", method=99)
    log.request.user_agent = "Player\x00/1.0"
    hit = prefix_hit(log)
    assert hit is not None
    assert (hit.user_agent, hit.method) == ("Player/1.0", "OTHER")


class Tenants:
    """A tenant service that knows no tenant, counting the questions."""

    def __init__(self) -> None:
        self.asked = 0

    async def get(self, tenant_id: uuid.UUID) -> TenantProfile:
        self.asked += 1
        raise NotFound("tenant", str(tenant_id))


async def test_made_up_prefixes_are_asked_about_once_a_while() -> None:
    tenants, now = Tenants(), [0.0]
    # No database: hits of unknown tenants are dropped before any is stored.
    recorder = PrefixRecorder(
        cast(Database, None),
        tenants,
        cast(EpisodeSource, None),
        (),
        b"s" * 32,
        clock=lambda: now[0],
    )
    made_up = [
        PrefixHit(uuid.uuid4(), "r", 0, "203.0.113.7", APP, "", "GET", "", 302, "u", "k")
        for _ in range(3)
    ]
    assert await recorder.record(made_up * 10) == 0
    assert await recorder.record(made_up) == 0
    assert tenants.asked == 3
    now[0] += UNKNOWN_PREFIX_TTL_S + 1
    assert await recorder.record(made_up) == 0
    assert tenants.asked == 6
