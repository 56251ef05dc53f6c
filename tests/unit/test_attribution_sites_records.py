"""The site event checks, origins and snippet of services.attribution.sites, without
a database: what each record earns, how origins compare, what the snippet holds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from podmesh.attribution.v1 import attribution_pb2 as pb
from podmesh.type.v1 import money_pb2

from services.attribution.sites import origins, snippet
from services.attribution.sites.records import Checked, PixelInfo, Request, check_batch
from services.shared.client_ip import IpHasher

TENANT = uuid.UUID("5b0c4d0e-63a6-4c36-9d1c-2a7f2a2f0001")
SPONSOR = uuid.UUID("5b0c4d0e-63a6-4c36-9d1c-2a7f2a2f0002")
PIXEL = uuid.UUID("5b0c4d0e-63a6-4c36-9d1c-2a7f2a2f0003")
OFF = uuid.UUID("5b0c4d0e-63a6-4c36-9d1c-2a7f2a2f0004")
SHOP = "https://shop.acme.example"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
HASHER = IpHasher(b"unit-test-secret-of-32-bytes!!!!", TENANT)
PIXELS = {
    PIXEL: PixelInfo(SPONSOR, True, (SHOP,), "acme.example"),
    OFF: PixelInfo(SPONSOR, False, (SHOP,), "acme.example"),
}
SERVER = Request(anonymous=False, origin="", client_ip="192.0.2.1", user_agent="server/1.0")
BROWSER = Request(anonymous=True, origin=SHOP, client_ip="192.0.2.9", user_agent="Mozilla/5.0")


def check(*events: pb.SiteEvent, request: Request = SERVER) -> Checked:
    return check_batch(
        events,
        tenant_id=TENANT,
        pixels=PIXELS,
        sponsors=frozenset({SPONSOR}),
        request=request,
        household=HASHER.household_id,
        now=NOW,
        oldest=NOW - timedelta(days=180),
    )


def view(event_id: str = "e1", **fields: object) -> pb.SiteEvent:
    given: dict[str, object] = {"pixel_id": str(PIXEL)} | fields
    return pb.SiteEvent(id=event_id, type=pb.SITE_EVENT_TYPE_PAGE_VIEW, **given)  # type: ignore[arg-type]


def at(moment: datetime) -> object:
    event = pb.SiteEvent()
    event.event_time.FromDatetime(moment)
    return event.event_time


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (view(""), pb.REJECTION_REASON_INVALID_ID),
        (view("i" * 129), pb.REJECTION_REASON_INVALID_ID),
        (pb.SiteEvent(id="e", pixel_id=str(PIXEL)), pb.REJECTION_REASON_MISSING_TYPE),
        (
            view(event_time=at(NOW + timedelta(minutes=5, seconds=1))),
            pb.REJECTION_REASON_TIME_IN_FUTURE,
        ),
        (view(event_time=at(NOW - timedelta(days=181))), pb.REJECTION_REASON_TIME_TOO_OLD),
        (pb.SiteEvent(id="e", type=pb.SITE_EVENT_TYPE_LEAD), pb.REJECTION_REASON_MISSING_SOURCE),
        (view(pixel_id=str(uuid.uuid4())), pb.REJECTION_REASON_UNKNOWN_PIXEL),
        (view(pixel_id=str(OFF)), pb.REJECTION_REASON_PIXEL_DISABLED),
        (view(sponsor_id=str(uuid.uuid4())), pb.REJECTION_REASON_UNKNOWN_SPONSOR),
        (
            pb.SiteEvent(id="e", type=pb.SITE_EVENT_TYPE_LEAD, sponsor_id=str(uuid.uuid4())),
            pb.REJECTION_REASON_UNKNOWN_SPONSOR,
        ),
        (view(client_ip="192.0.2.1:80"), pb.REJECTION_REASON_INVALID_CLIENT_IP),
        (
            view(value=money_pb2.Money(currency_code="USD", minor_units=-5)),
            pb.REJECTION_REASON_INVALID_VALUE,
        ),
        (
            view(value=money_pb2.Money(currency_code="DOLLARS", minor_units=5)),
            pb.REJECTION_REASON_INVALID_VALUE,
        ),
        (
            view(value=money_pb2.Money(currency_code="USD\n", minor_units=5)),
            pb.REJECTION_REASON_INVALID_VALUE,
        ),
        (view(order_id="o" * 2049), pb.REJECTION_REASON_FIELD_TOO_LONG),
        (view(url="https://x/\0"), pb.REJECTION_REASON_INVALID_TEXT),
    ],
)
def test_each_bad_record_earns_its_reason(event: pb.SiteEvent, reason: pb.RejectionReason) -> None:
    checked = check(view("good"), event)
    assert [(r.index, r.reason) for r in checked.rejections] == [(1, reason)]
    assert [row.event_id for row in checked.rows] == ["good"]


def test_a_browser_call_is_held_to_the_pixels_origins_and_its_own_address() -> None:
    allowed = check(view(client_ip="203.0.113.5"), request=BROWSER)
    (row,) = allowed.rows
    # The page's client_ip does not count without a credential: the request's does.
    assert row.household_id == HASHER.household_id("192.0.2.9")
    assert row.user_agent == "Mozilla/5.0"
    assert row.event_time == row.receive_time == NOW
    assert (row.sponsor_id, row.pixel_id) == (SPONSOR, PIXEL)
    for origin in ("https://evil.example", "", "null", "http://shop.acme.example"):
        refused = check(view(), request=Request(True, origin, "192.0.2.9", ""))
        assert [r.reason for r in refused.rejections] == [pb.REJECTION_REASON_ORIGIN_NOT_ALLOWED]
    by_sponsor = pb.SiteEvent(id="s", type=pb.SITE_EVENT_TYPE_LEAD, sponsor_id=str(SPONSOR))
    assert [r.reason for r in check(by_sponsor, request=BROWSER).rejections] == [
        pb.REJECTION_REASON_MISSING_SOURCE
    ]
    # A server names its visitor's address and may omit the origin.
    (server_row,) = check(view(client_ip="203.0.113.5")).rows
    assert server_row.household_id == HASHER.household_id("203.0.113.5")


def test_repeats_within_a_batch_are_duplicates() -> None:
    def purchase(event_id: str, order_id: str) -> pb.SiteEvent:
        return pb.SiteEvent(
            id=event_id,
            type=pb.SITE_EVENT_TYPE_PURCHASE,
            sponsor_id=str(SPONSOR),
            order_id=order_id,
            value=money_pb2.Money(currency_code="EUR", minor_units=100),
        )

    checked = check(
        view("a"), view("a"), purchase("b", "o1"), purchase("c", "o1"), purchase("d", "o2")
    )
    assert [row.event_id for row in checked.rows] == ["a", "b", "d"]
    assert checked.duplicates == 2
    # Order ids only dedupe purchases.
    assert check(view("x", order_id="o1"), view("y", order_id="o1")).duplicates == 0


@given(st.text(max_size=300))
def test_no_text_fails_the_check(text: str) -> None:
    event = view(
        text[:128] or "id",
        url=text,
        referrer=text,
        user_agent=text,
        order_id=text,
        promo_code=text,
        client_ip=text,
        pixel_id=text,
        sponsor_id=text,
    )
    checked = check(event)
    assert len(checked.rows) + len(checked.rejections) == 1


@pytest.mark.parametrize(
    ("given_origin", "normal"),
    [
        ("HTTPS://Shop.Example.COM", "https://shop.example.com"),
        ("https://shop.example.com:443/", "https://shop.example.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:80", "http://[::1]"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
    ],
)
def test_origins_are_normalised(given_origin: str, normal: str) -> None:
    assert origins.normalise_origin(given_origin) == normal


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "shop.example.com",
        "ftp://x.example",
        "https://*.example.com",
        "https://x.example/p",
        "https://u:p@x.example",
        "https://x.example?q",
        "https://x .example",
        "null",
        "https://x:99999",
    ],
)
def test_what_is_not_an_origin(bad: str) -> None:
    with pytest.raises(origins.InvalidOrigin):
        origins.normalise_origin(bad)


def test_without_origins_the_sponsors_domain_and_subdomains_count_over_https() -> None:
    assert origins.allowed("https://acme.example", (), "acme.example")
    assert origins.allowed("https://a.b.acme.example:8443", (), "acme.example")
    assert not origins.allowed("http://acme.example", (), "acme.example")
    assert not origins.allowed("https://evilacme.example", (), "acme.example")
    assert not origins.allowed("https://acme.example.evil", (), "acme.example")
    assert not origins.allowed("https://acme.example", (), "")
    # Listed origins replace the default.
    assert not origins.allowed("https://acme.example", (SHOP,), "acme.example")
    assert origins.allowed("HTTPS://SHOP.acme.example:443", (SHOP,), "acme.example")
    assert origins.normalise_domain("Acme.Example.") == "acme.example"
    assert origins.normalise_domain("127.0.0.1") == ""


def test_the_snippet_names_the_pixel_and_gateway_and_cannot_be_broken_out_of() -> None:
    text = snippet.render("https://gw.example/</script><script>alert(1)//", PIXEL)
    assert text.count("</script>") == 1
    assert f'"{PIXEL}"' in text
    assert "\\u003c/script>" in text
    plain = snippet.render("https://gw.example/", PIXEL)
    assert '"https://gw.example/api/v1/siteEvents:track"' in plain
    for stored_on_the_device in ("cookie", "localStorage", "sessionStorage"):
        assert stored_on_the_device not in plain
    assert 'credentials: "omit"' in plain
    assert "keepalive: true" in plain
    assert "sendBeacon" in plain
    assert "randomUUID" in plain
