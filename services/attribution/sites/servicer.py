"""The pixel and site event RPCs: protobuf in, operations of
services.attribution.sites.service, protobuf out."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from podmesh.attribution.v1 import attribution_pb2 as pb
from podmesh.type.v1 import money_pb2

from services.attribution.sites import snippet
from services.attribution.sites.origins import MAX_ORIGINS, InvalidOrigin, normalise_origin
from services.attribution.sites.records import MAX_TEXT_CHARS, Request
from services.attribution.sites.service import SiteEvents
from services.attribution.sites.store import ACTIVE, DISABLED, EventFilter, PixelRow
from services.shared.client_address import client_ip
from services.shared.context import current_tenant_id, principal_var
from services.shared.errors import InvalidArgument, NotFound
from services.shared.pagination import Keyset, PageTokens, split_page
from services.shared.peers import credentials
from services.shared.protobuf import timestamp
from services.shared.validation import Violations, mask_paths, page_size, parse_uuid

MAX_DISPLAY_NAME_CHARS = 200
_STATES = {pb.PIXEL_STATE_ACTIVE: ACTIVE, pb.PIXEL_STATE_DISABLED: DISABLED}
_STATE_NAMES = {ACTIVE: pb.PIXEL_STATE_ACTIVE, DISABLED: pb.PIXEL_STATE_DISABLED}
_EVENT_TYPES = frozenset(pb.SiteEventType.values()) - {pb.SITE_EVENT_TYPE_UNSPECIFIED}
_UPDATABLE = ("display_name", "state", "allowed_origins")


class SiteEventRpcs:
    """Pixels and site events. Set by the composing servicer's __init__."""

    _sites: SiteEvents
    _page_tokens: PageTokens

    # --- pixels ----------------------------------------------------------------------

    async def CreatePixel(
        self, request: pb.CreatePixelRequest, context: Any
    ) -> pb.CreatePixelResponse:
        tenant_id = current_tenant_id()
        given = request.pixel
        violations = Violations()
        sponsor_id = _optional_uuid(given.sponsor_id, "pixel.sponsor_id", violations)
        violations.check(bool(given.sponsor_id), "pixel.sponsor_id", "is required")
        _check_display_name(given.display_name, violations)
        state = _state(given.state, violations)
        allowed = _allowed_origins(given.allowed_origins, violations)
        violations.raise_if_any()
        assert sponsor_id is not None
        domain = await self._sites.sponsor_domain(sponsor_id, credentials(context))
        _require_origins(allowed, domain)
        row = await self._sites.store.insert_pixel(
            tenant_id,
            PixelRow(
                pixel_id=uuid.uuid4(),
                sponsor_id=sponsor_id,
                display_name=given.display_name,
                state=state or ACTIVE,
                allowed_origins=allowed,
                sponsor_domain=domain,
                last_event_time=None,
                created_at=dt.datetime.now(dt.UTC),
                updated_at=dt.datetime.now(dt.UTC),
            ),
        )
        return pb.CreatePixelResponse(pixel=self._pixel_pb(row))

    async def GetPixel(self, request: pb.GetPixelRequest, context: Any) -> pb.GetPixelResponse:
        pixel_id = parse_uuid(request.pixel_id, "pixel_id")
        row = await self._sites.store.pixel(current_tenant_id(), pixel_id)
        if row is None:
            raise NotFound("pixel", request.pixel_id)
        return pb.GetPixelResponse(pixel=self._pixel_pb(row))

    async def ListPixels(
        self, request: pb.ListPixelsRequest, context: Any
    ) -> pb.ListPixelsResponse:
        size = page_size(request.page_size)
        sponsor_id = parse_uuid(request.sponsor_id, "sponsor_id") if request.sponsor_id else None
        keyset = Keyset(self._page_tokens, {"list": "pixels", "sponsor": str(sponsor_id or "")})
        rows = await self._sites.store.list_pixels(
            current_tenant_id(), sponsor_id, keyset.after(request.page_token), size + 1
        )
        page, more = split_page(rows, size)
        last = (page[-1].created_at, page[-1].pixel_id) if more else None
        return pb.ListPixelsResponse(
            pixels=[self._pixel_pb(row) for row in page], next_page_token=keyset.next_token(last)
        )

    async def UpdatePixel(
        self, request: pb.UpdatePixelRequest, context: Any
    ) -> pb.UpdatePixelResponse:
        tenant_id = current_tenant_id()
        pixel_id = parse_uuid(request.pixel.id, "pixel.id")
        paths = mask_paths(request.update_mask.paths, _UPDATABLE)
        given = request.pixel
        violations = Violations()
        changes: dict[str, Any] = {}
        if "display_name" in paths:
            _check_display_name(given.display_name, violations)
            changes["display_name"] = given.display_name
        if "state" in paths:
            state = _state(given.state, violations)
            violations.check(state is not None, "pixel.state", "must be active or disabled")
            changes["state"] = state
        if "allowed_origins" in paths:
            changes["allowed_origins"] = list(_allowed_origins(given.allowed_origins, violations))
        violations.raise_if_any()
        current = await self._sites.store.pixel(tenant_id, pixel_id)
        if current is None:
            raise NotFound("pixel", request.pixel.id)
        if "allowed_origins" in changes:
            # The sponsor's domain may have changed since: read it again.
            domain = await self._sites.sponsor_domain(current.sponsor_id, credentials(context))
            _require_origins(tuple(changes["allowed_origins"]), domain)
            changes["sponsor_domain"] = domain
        row = await self._sites.store.update_pixel(tenant_id, pixel_id, changes)
        if row is None:
            raise NotFound("pixel", request.pixel.id)
        return pb.UpdatePixelResponse(pixel=self._pixel_pb(row))

    async def DeletePixel(
        self, request: pb.DeletePixelRequest, context: Any
    ) -> pb.DeletePixelResponse:
        pixel_id = parse_uuid(request.pixel_id, "pixel_id")
        if not await self._sites.store.delete_pixel(current_tenant_id(), pixel_id):
            raise NotFound("pixel", request.pixel_id)
        return pb.DeletePixelResponse()

    def _pixel_pb(self, row: PixelRow) -> pb.Pixel:
        return pb.Pixel(
            id=str(row.pixel_id),
            sponsor_id=str(row.sponsor_id),
            display_name=row.display_name,
            state=_STATE_NAMES[row.state],
            allowed_origins=row.allowed_origins,
            snippet=snippet.render(self._sites.gateway_url, row.pixel_id),
            last_event_time=timestamp(row.last_event_time),
            create_time=timestamp(row.created_at),
            update_time=timestamp(row.updated_at),
        )

    # --- site events -----------------------------------------------------------------

    async def TrackSiteEvents(
        self, request: pb.TrackSiteEventsRequest, context: Any
    ) -> pb.TrackSiteEventsResponse:
        outcome = await self._sites.track(request.events, _request(context))
        return pb.TrackSiteEventsResponse(
            accepted_count=outcome.accepted,
            duplicate_count=outcome.duplicates,
            rejections=outcome.rejections,
        )

    def StreamSiteEvents(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[pb.StreamSiteEventsResponse]:
        return self._sites.stream(request_iterator, _request(context))

    async def ListSiteEvents(
        self, request: pb.ListSiteEventsRequest, context: Any
    ) -> pb.ListSiteEventsResponse:
        size = page_size(request.page_size)
        violations = Violations()
        where = EventFilter(
            pixel_id=_optional_uuid(request.pixel_id, "pixel_id", violations),
            sponsor_id=_optional_uuid(request.sponsor_id, "sponsor_id", violations),
            types=tuple(sorted(set(request.types))),
            start=_instant(request, "start_time", violations),
            end=_instant(request, "end_time", violations),
        )
        violations.check(
            all(t in _EVENT_TYPES for t in where.types), "types", "must be site event types"
        )
        violations.raise_if_any()
        query = {
            "list": "site_events",
            "pixel": str(where.pixel_id or ""),
            "sponsor": str(where.sponsor_id or ""),
            "types": list(where.types),
            "start": where.start.isoformat() if where.start else "",
            "end": where.end.isoformat() if where.end else "",
        }
        cursor = self._page_tokens.decode(request.page_token, query)
        before = (dt.datetime.fromisoformat(cursor["t"]), str(cursor["id"])) if cursor else None
        rows = await self._sites.store.list_events(current_tenant_id(), where, before, size + 1)
        page, more = split_page(rows, size)
        token = (
            self._page_tokens.encode(
                {"t": page[-1]["event_time"].isoformat(), "id": page[-1]["event_id"]}, query
            )
            if more
            else ""
        )
        return pb.ListSiteEventsResponse(
            site_events=[_event_pb(row) for row in page], next_page_token=token
        )


def _request(context: Any) -> Request:
    metadata = [(k, v) for k, v in context.invocation_metadata() or () if isinstance(v, str)]
    by_name = dict(metadata)
    return Request(
        # The interceptor let the call in without a principal: no credential was sent.
        anonymous=principal_var.get() is None,
        origin=by_name.get("origin", "")[:MAX_TEXT_CHARS],
        client_ip=client_ip(metadata, context.peer()),
        user_agent=by_name.get("user-agent", ""),
    )


def _event_pb(row: Mapping[str, Any]) -> pb.SiteEvent:
    event = pb.SiteEvent(
        id=row["event_id"],
        type=row["event_type"],
        event_time=timestamp(row["event_time"]),
        pixel_id=str(row["pixel_id"]) if row["pixel_id"] else "",
        sponsor_id=str(row["sponsor_id"]),
        user_agent=row["user_agent"],
        url=row["url"],
        referrer=row["referrer"],
        order_id=row["order_id"],
        promo_code=row["promo_code"],
        household_id=row["household_id"].hex(),
        receive_time=timestamp(row["receive_time"]),
    )
    if row["currency_code"]:
        event.value.CopyFrom(
            money_pb2.Money(currency_code=row["currency_code"], minor_units=row["value_minor"])
        )
    return event


def _optional_uuid(text: str, name: str, violations: Violations) -> uuid.UUID | None:
    if not text:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        violations.add(name, "must be a UUID")
        return None


def _instant(request: Any, name: str, violations: Violations) -> dt.datetime | None:
    if not request.HasField(name):
        return None
    try:
        moment: dt.datetime = getattr(request, name).ToDatetime(dt.UTC)
    except (ValueError, OverflowError):
        violations.add(name, "is not a valid instant")
        return None
    return moment


def _check_display_name(name: str, violations: Violations) -> None:
    violations.check(
        len(name) <= MAX_DISPLAY_NAME_CHARS,
        "pixel.display_name",
        f"must be at most {MAX_DISPLAY_NAME_CHARS} characters",
    )


def _state(state: int, violations: Violations) -> int | None:
    if state == pb.PIXEL_STATE_UNSPECIFIED:
        return None
    if state not in _STATES:
        violations.add("pixel.state", "must be active or disabled")
        return None
    return _STATES[state]  # type: ignore[index]


def _allowed_origins(given: Any, violations: Violations) -> tuple[str, ...]:
    if len(given) > MAX_ORIGINS:
        violations.add("pixel.allowed_origins", f"at most {MAX_ORIGINS} origins")
        return ()
    normal: list[str] = []
    for index, text in enumerate(given):
        try:
            origin = normalise_origin(text)
        except InvalidOrigin as error:
            violations.add(f"pixel.allowed_origins[{index}]", str(error))
            continue
        if origin not in normal:
            normal.append(origin)
    return tuple(normal)


def _require_origins(allowed: tuple[str, ...], sponsor_domain: str) -> None:
    if not allowed and not sponsor_domain:
        raise InvalidArgument.field(
            "pixel.allowed_origins",
            "the sponsor has no web domain to default to: list the origins that may send events",
        )
