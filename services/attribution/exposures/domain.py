"""Exposures: ads delivered to households for line items, the touchpoints every
attribution model credits.

Two sources. Analytics' counted ad deliveries (IAB ads delivered inside counted
downloads) on slots a placement booked at the delivery's time arrive through
ApplyAdDeliveries, keyed by download and slot; third-party exposures arrive through
IngestExposures, keyed by the sender's id. Each key is stored once per tenant
(attribution_keys, kind 3), namespaced by source so a sender's id never meets one of
analytics'.
"""

from __future__ import annotations

import enum
import hashlib
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

KEY_KIND = 3
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 2_048
# Exposures may be at most this far ahead of the clock (skewed ad servers).
MAX_FUTURE_S = 300
# Analytics stores an unknown country as this.
UNKNOWN_COUNTRY = "ZZ"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)
_MICROS = struct.Struct("!q")


class Source(enum.IntEnum):
    ANALYTICS = 1
    INGESTED = 2


@dataclass(frozen=True, slots=True)
class Exposure:
    exposure_id: str
    source: Source
    exposure_time: datetime
    campaign_id: uuid.UUID
    line_item_id: uuid.UUID
    placement_id: uuid.UUID | None
    podcast_id: uuid.UUID | None
    episode_id: uuid.UUID | None
    ad_slot_id: uuid.UUID | None
    household_id: bytes
    country_code: str
    receive_time: datetime | None = None

    @property
    def key(self) -> str:
        return idempotency_key(self.source, self.exposure_id)


def idempotency_key(source: Source, exposure_id: str) -> str:
    """The exposure's attribution_keys key: its id within its source's namespace."""
    return f"{int(source)}/{exposure_id}"


def analytics_exposure_id(
    episode_id: uuid.UUID, listener_id: bytes, window_start: datetime, ad_slot_id: uuid.UUID
) -> str:
    """The id of a counted delivery: a hash of its download's key (episode, listener,
    counting window) and its slot, so every recount or rebuild of the same delivery
    lands on the same exposure. 32 hex digits, prefixed to say where it came from."""
    micros = (window_start - _EPOCH) // _ONE_MICROSECOND
    digest = hashlib.sha256(
        episode_id.bytes + _MICROS.pack(micros) + ad_slot_id.bytes + listener_id
    ).digest()
    return "dl-" + digest[:16].hex()


def stored_country(code: str) -> str:
    """ISO 3166-1 alpha-2 in upper case, or '' when unknown."""
    upper = code.strip().upper()
    return "" if upper == UNKNOWN_COUNTRY else upper


def is_country(code: str) -> bool:
    return code == "" or (len(code) == 2 and code.isascii() and code.isalpha())


class Reason(enum.IntEnum):
    """Why an ingested exposure was not stored (RejectionReason's numbers)."""

    INVALID_ID = 1
    MISSING_TIME = 3
    TIME_IN_FUTURE = 4
    TIME_TOO_OLD = 5
    UNKNOWN_LINE_ITEM = 11
    INVALID_CLIENT_IP = 12
    FIELD_TOO_LONG = 14
    OUTSIDE_FLIGHT = 15
    UNKNOWN_PLACEMENT = 16
    INVALID_FIELD = 17


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    exposure_id: str
    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class ExposureInput:
    """One third-party exposure as given (IngestExposures), not yet checked."""

    exposure_id: str
    exposure_time: datetime | None
    line_item_id: str
    placement_id: str
    podcast_id: str
    episode_id: str
    ad_slot_id: str
    client_ip: str
    country_code: str


@dataclass(frozen=True, slots=True)
class DeliveryChange:
    """One ad delivery analytics counted, or with `removed` took away."""

    exposure_id: str
    removed: bool
    episode_id: uuid.UUID
    podcast_id: uuid.UUID
    ad_slot_id: uuid.UUID
    delivered_time: datetime
    household_id: bytes
    country_code: str


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    added: int
    removed: int
    duplicates: int
    unbooked: int


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    accepted: int
    duplicates: int
    rejections: list[Rejection]
