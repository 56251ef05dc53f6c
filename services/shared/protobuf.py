"""Well-known protobuf types to and from Python values, the same in every servicer."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def from_timestamp(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def instant(message: Message, field: str) -> datetime | None:
    """A Timestamp field of `message` as a UTC datetime; None when it is unset."""
    if not message.HasField(field):
        return None
    return from_timestamp(getattr(message, field))


def duration(milliseconds: int | None) -> Duration | None:
    if milliseconds is None:
        return None
    value = Duration()
    value.FromMilliseconds(milliseconds)
    return value


def milliseconds(value: Duration) -> int:
    """Whole milliseconds, negative durations included (validation rejects them)."""
    return value.seconds * 1000 + int(value.nanos / 1_000_000)
