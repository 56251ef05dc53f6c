"""The exposure RPCs: protobuf in, operations, protobuf out."""

from __future__ import annotations

import uuid
from typing import Any, cast

from podmesh.attribution.v1 import attribution_pb2 as pb

from services.attribution.exposures.domain import (
    DeliveryChange,
    Exposure,
    ExposureInput,
    Source,
    analytics_exposure_id,
)
from services.attribution.exposures.operations import Exposures
from services.attribution.exposures.repository import ExposureFilter
from services.shared.context import current_tenant_id
from services.shared.errors import InvalidArgument
from services.shared.inputs import KIB, MIB, InputRule
from services.shared.protobuf import from_timestamp, timestamp
from services.shared.validation import Violations, page_size

MAX_INGESTED_EXPOSURES = 5_000
MAX_DELIVERY_CHANGES = 1_000
HOUSEHOLD_ID_BYTES = 16

# 5,000 exposures of a few hundred bytes each; records are checked one by one, so one
# with a NUL is rejected alone. 1,000 delivery changes of about 200 bytes.
INPUTS: dict[str, InputRule] = {
    "IngestExposures": InputRule(max_bytes=4 * MIB, unchecked_fields=frozenset({"exposures"})),
    "ApplyAdDeliveries": InputRule(max_bytes=512 * KIB),
}


class ExposureRpcs:
    _exposures: Exposures

    async def IngestExposures(
        self, request: pb.IngestExposuresRequest, context: Any
    ) -> pb.IngestExposuresResponse:
        count = len(request.exposures)
        if not 1 <= count <= MAX_INGESTED_EXPOSURES:
            raise InvalidArgument.field(
                "exposures",
                f"give 1 to {MAX_INGESTED_EXPOSURES} exposures, not {count}",
                reason="BATCH_TOO_LARGE" if count else None,
            )
        outcome = await self._exposures.ingest(
            current_tenant_id(), [_input(e) for e in request.exposures]
        )
        return pb.IngestExposuresResponse(
            accepted_count=outcome.accepted,
            duplicate_count=outcome.duplicates,
            rejections=[
                pb.Rejection(
                    index=r.index,
                    event_id=r.exposure_id,
                    reason=cast(pb.RejectionReason, int(r.reason)),
                    message=r.message,
                )
                for r in outcome.rejections
            ],
        )

    async def ListExposures(
        self, request: pb.ListExposuresRequest, context: Any
    ) -> pb.ListExposuresResponse:
        v = Violations()
        ids = {
            name: _optional_uuid(getattr(request, name), name, v)
            for name in (
                "campaign_id",
                "line_item_id",
                "placement_id",
                "podcast_id",
                "episode_id",
                "ad_slot_id",
            )
        }
        household_id = None
        if request.household_id:
            try:
                household_id = bytes.fromhex(request.household_id)
            except ValueError:
                household_id = b""
            v.check(
                len(household_id) == HOUSEHOLD_ID_BYTES,
                "household_id",
                f"must be {2 * HOUSEHOLD_ID_BYTES} hex digits",
            )
        source = None
        if request.source:
            known = {int(s) for s in Source}
            if v.check(int(request.source) in known, "source", "is not an exposure source"):
                source = Source(int(request.source))
        start = from_timestamp(request.start_time) if request.HasField("start_time") else None
        end = from_timestamp(request.end_time) if request.HasField("end_time") else None
        if start is not None and end is not None:
            v.check(start < end, "end_time", "must be after start_time")
        v.raise_if_any()
        exposures, token = await self._exposures.list(
            current_tenant_id(),
            ExposureFilter(
                **ids,
                household_id=household_id,
                source=source,
                start_time=start,
                end_time=end,
            ),
            page_size(request.page_size),
            request.page_token,
        )
        return pb.ListExposuresResponse(
            exposures=[exposure_to_pb(e) for e in exposures], next_page_token=token
        )

    async def ApplyAdDeliveries(
        self, request: pb.ApplyAdDeliveriesRequest, context: Any
    ) -> pb.ApplyAdDeliveriesResponse:
        v = Violations()
        tenant_id = _optional_uuid(request.tenant_id, "tenant_id", v)
        v.check(bool(request.tenant_id), "tenant_id", "is required")
        v.check(
            1 <= len(request.changes) <= MAX_DELIVERY_CHANGES,
            "changes",
            f"give 1 to {MAX_DELIVERY_CHANGES}",
        )
        changes = [_change(c, f"changes[{i}]", v) for i, c in enumerate(request.changes)]
        v.raise_if_any()
        assert tenant_id is not None
        outcome = await self._exposures.apply_deliveries(
            tenant_id, [c for c in changes if c is not None]
        )
        return pb.ApplyAdDeliveriesResponse(
            added_count=outcome.added,
            removed_count=outcome.removed,
            duplicate_count=outcome.duplicates,
            unbooked_count=outcome.unbooked,
        )


def exposure_to_pb(e: Exposure) -> pb.Exposure:
    return pb.Exposure(
        id=e.exposure_id,
        exposure_time=timestamp(e.exposure_time),
        line_item_id=str(e.line_item_id),
        campaign_id=str(e.campaign_id),
        placement_id=_text(e.placement_id),
        podcast_id=_text(e.podcast_id),
        episode_id=_text(e.episode_id),
        ad_slot_id=_text(e.ad_slot_id),
        household_id=e.household_id.hex(),
        country_code=e.country_code,
        source=cast(pb.ExposureSource, int(e.source)),
        receive_time=timestamp(e.receive_time),
    )


def _input(e: pb.Exposure) -> ExposureInput:
    return ExposureInput(
        exposure_id=e.id,
        exposure_time=from_timestamp(e.exposure_time) if e.HasField("exposure_time") else None,
        line_item_id=e.line_item_id,
        placement_id=e.placement_id,
        podcast_id=e.podcast_id,
        episode_id=e.episode_id,
        ad_slot_id=e.ad_slot_id,
        client_ip=e.client_ip,
        country_code=e.country_code,
    )


def _change(c: pb.AdDeliveryChange, field: str, v: Violations) -> DeliveryChange | None:
    episode_id = _optional_uuid(c.episode_id, f"{field}.episode_id", v)
    podcast_id = _optional_uuid(c.podcast_id, f"{field}.podcast_id", v)
    ad_slot_id = _optional_uuid(c.ad_slot_id, f"{field}.ad_slot_id", v)
    complete = v.check(
        c.HasField("window_start_time")
        and c.HasField("delivered_time")
        and bool(c.listener_id)
        and len(c.household_id) == HOUSEHOLD_ID_BYTES,
        field,
        "needs episode, podcast, slot, listener, window start, delivered time and household",
    )
    if episode_id is None or podcast_id is None or ad_slot_id is None or not complete:
        return None
    return DeliveryChange(
        exposure_id=analytics_exposure_id(
            episode_id, c.listener_id, from_timestamp(c.window_start_time), ad_slot_id
        ),
        removed=c.removed,
        episode_id=episode_id,
        podcast_id=podcast_id,
        ad_slot_id=ad_slot_id,
        delivered_time=from_timestamp(c.delivered_time),
        household_id=c.household_id,
        country_code=c.country_code,
    )


def _optional_uuid(value: str, field: str, v: Violations) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        v.add(field, "must be a UUID")
        return None


def _text(value: uuid.UUID | None) -> str:
    return "" if value is None else str(value)
