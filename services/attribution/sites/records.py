"""Checks a batch of site events one by one: the rows to store, and each rejected
record with its reason. Pure: the pixels, sponsors, clock and request come in."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from asyncpg.pgproto.pgproto import UUID as PgUuid
from podmesh.attribution.v1 import attribution_pb2 as pb

from services.attribution.sites import origins
from services.shared.client_ip import InvalidIpError
from services.shared.money import is_currency_code

MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 2048
MAX_FUTURE = timedelta(minutes=5)
_TYPES = frozenset(pb.SiteEventType.values()) - {pb.SITE_EVENT_TYPE_UNSPECIFIED}
_TEXT_FIELDS = ("user_agent", "url", "referrer", "order_id", "promo_code")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Row(NamedTuple):
    """One stored site event, in the COPY column order of site_events
    (db/migrations/0060_attribution.sql). Its ids are asyncpg's UUIDs (a uuid.UUID):
    COPY encodes those from their bytes, a plain uuid.UUID through its Python-level
    `bytes` property, on every row."""

    tenant_id: uuid.UUID
    event_time: datetime
    receive_time: datetime
    sponsor_id: uuid.UUID
    pixel_id: uuid.UUID | None
    event_type: int
    value_minor: int
    household_id: bytes
    event_id: str
    currency_code: str
    user_agent: str
    url: str
    referrer: str
    order_id: str
    promo_code: str


COLUMNS = Row._fields
# Builds a Row from a tuple in C, without the Python-level __new__ of a NamedTuple.
_new_row = tuple.__new__


@dataclass(frozen=True, slots=True)
class PixelInfo:
    sponsor_id: uuid.UUID
    active: bool
    allowed_origins: tuple[str, ...]
    sponsor_domain: str


@dataclass(frozen=True, slots=True)
class Request:
    """What the call itself says about its events."""

    # The caller sent no credential: only pixels' events from their pages count.
    anonymous: bool
    # The Origin header, '' when absent (calls from servers).
    origin: str
    # The client address and User-Agent of the HTTP request (through the gateway) or
    # of the gRPC peer.
    client_ip: str
    user_agent: str


@dataclass(slots=True)
class Checked:
    rows: list[Row] = field(default_factory=list)
    rejections: list[pb.Rejection] = field(default_factory=list)
    # Repeats of an id or order earlier in the same batch.
    duplicates: int = 0


def pixel_ids(events: Sequence[pb.SiteEvent]) -> set[uuid.UUID]:
    """The well-formed pixel ids a batch names."""
    found: set[uuid.UUID] = set()
    for text in {event.pixel_id for event in events if event.pixel_id}:
        parsed = _uuid(text)
        if parsed is not None:
            found.add(parsed)
    return found


def source_ids(events: Sequence[pb.SiteEvent]) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    """The well-formed pixel ids and sponsor ids a batch names, in one pass."""
    named = {(event.pixel_id, event.sponsor_id) for event in events}
    pixels = {_uuid(pixel) for pixel, _ in named if pixel}
    sponsors = {_uuid(sponsor) for _, sponsor in named if sponsor}
    return (
        {p for p in pixels if p is not None},
        {s for s in sponsors if s is not None},
    )


def check_batch(
    events: Sequence[pb.SiteEvent],
    *,
    tenant_id: uuid.UUID,
    pixels: Mapping[uuid.UUID, PixelInfo],
    sponsors: frozenset[uuid.UUID],
    request: Request,
    household: Callable[[str], bytes],
    now: datetime,
    oldest: datetime,
) -> Checked:
    """`pixels` are the tenant's pixels the batch names; `sponsors` the sponsors
    server events may name; `household` hashes a client IP (raising InvalidIpError).

    Every event is read once into locals (each read of a message field makes a Python
    object) and held to cheap checks that pass only what `_problem` passes; an event
    that fails one goes to `_problem`, which alone says what is wrong. What repeats
    over a batch, its pixels and sponsors and its visitors' addresses, is looked up
    once per batch: nothing outlives the batch, so no raw address lingers.
    """
    out = Checked()
    rows = out.rows
    seen_ids: set[str] = set()
    seen_orders: set[str] = set()
    origin_ok: dict[uuid.UUID, bool] = {}
    ids: dict[str, uuid.UUID | None] = {}
    sources: dict[tuple[str, str], _Rejected | tuple[uuid.UUID, uuid.UUID | None]] = {}
    households: dict[str, bytes] = {}
    tenant = PgUuid(tenant_id.bytes)
    latest = now + MAX_FUTURE
    # Whole seconds that are surely within [oldest, latest]; the instants at either
    # edge are compared exactly.
    first_second = int(oldest.timestamp()) + 1
    last_second = int(latest.timestamp()) - 1
    anonymous = request.anonymous
    default_user_agent = request.user_agent[:MAX_TEXT_CHARS].replace("\0", "")
    for index, event in enumerate(events):
        event_id = event.id
        event_type = event.type
        user_agent = event.user_agent
        url = event.url
        referrer = event.referrer
        order_id = event.order_id
        promo_code = event.promo_code
        text = event_id + user_agent + url + referrer + order_id + promo_code
        stamp = event.event_time
        seconds = stamp.seconds
        event_time: datetime | None = now
        if seconds:
            nanos = stamp.nanos
            event_time = (
                _EPOCH + timedelta(0, seconds, nanos // 1000)
                if first_second <= seconds <= last_second and 0 <= nanos < 1_000_000_000
                else None
            )
        elif event.HasField("event_time"):
            event_time = None
        named = (event.pixel_id, event.sponsor_id)
        source = sources.get(named)
        if source is None:
            source = sources[named] = _source(*named, pixels, sponsors, request, origin_ok, ids)
        value_minor = 0
        currency = ""
        bad_value = False
        if event.HasField("value"):
            value = event.value
            value_minor = value.minor_units
            currency = value.currency_code
            bad_value = value_minor < 0 or not is_currency_code(currency)
        if (
            event_time is None
            or "\0" in text
            or len(text) > MAX_TEXT_CHARS
            or not 0 < len(event_id) <= MAX_ID_CHARS
            or event_type not in _TYPES
            or isinstance(source, _Rejected)
            or bad_value
        ):
            problem = _problem(
                event, pixels, sponsors, request, origin_ok, ids, now, latest, oldest
            )
            if isinstance(problem, _Rejected):
                out.rejections.append(
                    pb.Rejection(
                        index=index,
                        event_id=event_id[:MAX_ID_CHARS].replace("\0", ""),
                        reason=problem.reason,
                        message=problem.message,
                    )
                )
                continue
            event_time = problem[0]
            source = problem[1:]
        sponsor_id, pixel_id = source
        # A pixel's page cannot choose its visitor's address: only credentialed callers
        # (servers relaying their visitors' events) may give one.
        client_ip = (event.client_ip if not anonymous else "") or request.client_ip
        household_id = households.get(client_ip)
        if household_id is None:
            try:
                household_id = households[client_ip] = household(client_ip)
            except InvalidIpError:
                out.rejections.append(
                    pb.Rejection(
                        index=index,
                        event_id=event_id,
                        reason=pb.REJECTION_REASON_INVALID_CLIENT_IP,
                        message="client_ip is not an IP address",
                    )
                )
                continue
        if event_id in seen_ids:
            out.duplicates += 1
            continue
        seen_ids.add(event_id)
        if event_type != pb.SITE_EVENT_TYPE_PURCHASE:
            order_id = ""
        elif order_id:
            order_key = order_key_of(sponsor_id, order_id)
            if order_key in seen_orders:
                out.duplicates += 1
                continue
            seen_orders.add(order_key)
        rows.append(
            _new_row(
                Row,
                (
                    tenant,
                    event_time,
                    now,
                    sponsor_id,
                    pixel_id,
                    event_type,
                    value_minor,
                    household_id,
                    event_id,
                    currency,
                    user_agent or default_user_agent,
                    url,
                    referrer,
                    order_id,
                    promo_code,
                ),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class _Rejected:
    reason: pb.RejectionReason
    message: str


def _problem(
    event: pb.SiteEvent,
    pixels: Mapping[uuid.UUID, PixelInfo],
    sponsors: frozenset[uuid.UUID],
    request: Request,
    origin_ok: dict[uuid.UUID, bool],
    ids: dict[str, uuid.UUID | None],
    now: datetime,
    latest: datetime,
    oldest: datetime,
) -> _Rejected | tuple[datetime, uuid.UUID, uuid.UUID | None]:
    """Why the event is rejected, or its time, sponsor and pixel."""
    event_id = event.id
    if not event_id or len(event_id) > MAX_ID_CHARS or "\0" in event_id:
        return _Rejected(
            pb.REJECTION_REASON_INVALID_ID,
            f"id must be 1 to {MAX_ID_CHARS} characters without NUL",
        )
    if event.type not in _TYPES:
        return _Rejected(
            pb.REJECTION_REASON_MISSING_TYPE, "type must be a page view, lead or purchase"
        )
    text = _text_problem(event)
    if text is not None:
        return _Rejected(*text)
    if event.HasField("event_time"):
        stamp = event.event_time
        try:
            event_time = datetime.fromtimestamp(stamp.seconds, UTC).replace(
                microsecond=stamp.nanos // 1000
            )
        except (ValueError, OverflowError, OSError):
            return _Rejected(pb.REJECTION_REASON_TIME_TOO_OLD, "event_time is not a valid instant")
        if event_time > latest:
            return _Rejected(
                pb.REJECTION_REASON_TIME_IN_FUTURE, "event_time is over 5 minutes ahead"
            )
        if event_time < oldest:
            return _Rejected(
                pb.REJECTION_REASON_TIME_TOO_OLD,
                f"event_time is before {oldest.isoformat()}, past the raw-data retention",
            )
    else:
        event_time = now
    source = _source(event.pixel_id, event.sponsor_id, pixels, sponsors, request, origin_ok, ids)
    if isinstance(source, _Rejected):
        return source
    if event.HasField("value"):
        value = event.value
        if value.minor_units < 0 or not is_currency_code(value.currency_code):
            return _Rejected(
                pb.REJECTION_REASON_INVALID_VALUE,
                "value needs an ISO 4217 currency code and minor_units of 0 or more",
            )
    return event_time, *source


def _source(
    pixel_text: str,
    sponsor_text: str,
    pixels: Mapping[uuid.UUID, PixelInfo],
    sponsors: frozenset[uuid.UUID],
    request: Request,
    origin_ok: dict[uuid.UUID, bool],
    ids: dict[str, uuid.UUID | None],
) -> _Rejected | tuple[uuid.UUID, uuid.UUID | None]:
    """Why the pixel or sponsor an event names does not count, or its sponsor and pixel."""
    if pixel_text:
        pixel_id = _cached_uuid(pixel_text, ids)
        pixel = pixels.get(pixel_id) if pixel_id is not None else None
        if pixel is None or pixel_id is None:
            return _Rejected(
                pb.REJECTION_REASON_UNKNOWN_PIXEL, "no pixel of this tenant has this id"
            )
        if not pixel.active:
            return _Rejected(pb.REJECTION_REASON_PIXEL_DISABLED, "the pixel is disabled")
        if request.anonymous or request.origin:
            ok = origin_ok.get(pixel_id)
            if ok is None:
                ok = origin_ok[pixel_id] = origins.allowed(
                    request.origin, pixel.allowed_origins, pixel.sponsor_domain
                )
            if not ok:
                return _Rejected(
                    pb.REJECTION_REASON_ORIGIN_NOT_ALLOWED,
                    "the page's origin is not among the pixel's allowed origins",
                )
        if sponsor_text and _cached_uuid(sponsor_text, ids) != pixel.sponsor_id:
            return _Rejected(
                pb.REJECTION_REASON_UNKNOWN_SPONSOR, "sponsor_id is not the pixel's sponsor"
            )
        return PgUuid(pixel.sponsor_id.bytes), pixel_id
    if sponsor_text:
        if request.anonymous:
            return _Rejected(
                pb.REJECTION_REASON_MISSING_SOURCE,
                "calls without a credential must name a pixel (pixel_id)",
            )
        parsed = _cached_uuid(sponsor_text, ids)
        if parsed is None or parsed not in sponsors:
            return _Rejected(
                pb.REJECTION_REASON_UNKNOWN_SPONSOR,
                "no sponsor of this tenant with a pixel has this id",
            )
        return parsed, None
    return _Rejected(pb.REJECTION_REASON_MISSING_SOURCE, "give pixel_id or sponsor_id")


def order_key_of(sponsor_id: uuid.UUID, order_id: str) -> str:
    """The idempotency key of a purchase's order (attribution_keys kind 2)."""
    return f"{sponsor_id}/{order_id}"


def _text_problem(event: pb.SiteEvent) -> tuple[pb.RejectionReason, str] | None:
    """The stored text fields' problem. Ids, addresses and the currency are parsed,
    never stored as given: a NUL or an over-long one fails its own check."""
    for name in _TEXT_FIELDS:
        value: str = getattr(event, name)
        if len(value) > MAX_TEXT_CHARS:
            return pb.REJECTION_REASON_FIELD_TOO_LONG, f"{name} is over {MAX_TEXT_CHARS} characters"
        if "\0" in value:
            return pb.REJECTION_REASON_INVALID_TEXT, f"{name} contains a NUL character"
    return None


def _cached_uuid(text: str, cache: dict[str, uuid.UUID | None]) -> uuid.UUID | None:
    if text in cache:
        return cache[text]
    parsed = cache[text] = _uuid(text)
    return parsed


def _uuid(text: str) -> uuid.UUID | None:
    """uuid.UUID reads more spellings (braces, urn:uuid:, any hyphens) than asyncpg's
    UUID, which is made from the bytes."""
    try:
        return PgUuid(uuid.UUID(text).bytes)  # type: ignore[no-any-return]
    except ValueError:
        return None
