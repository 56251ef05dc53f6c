"""The counting state of one (listener, episode, window), as stored in counting_states.

The counting package's own snapshot of a window (`WindowState.to_dict`), written
compactly: every batch writes the state of every window it touches, and JSON costs
about twice as much to write and read and three times the space. Little-endian,
version 1:

    B version, B flags (1 full response, 2 counted, 4 rolling),
    16s listener id, 16s household id, 16s episode uuid, q window start, q first time,
    H intervals, H pieces, B ad slots,
    then strings (B length + UTF-8): first country, app, device class, OS, each slot id,
    then intervals (q first, q last), then pieces (q time, q first, q last, B 200
    response, string country).
"""

from __future__ import annotations

import struct
import uuid
from functools import lru_cache

from services.analytics.counting import WindowState

VERSION = 1
_FULL, _COUNTED, _ROLLING = 1, 2, 4
_HEAD = struct.Struct("<BB16s16s16sqqHHB")
_PAIR = struct.Struct("<qq")
_PIECE = struct.Struct("<qqqB")


@lru_cache(maxsize=65_536)
def _uuid_bytes(text: str) -> bytes:
    return uuid.UUID(text).bytes


@lru_cache(maxsize=65_536)
def _uuid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes=raw))


def _text(value: str) -> bytes:
    raw = value.encode()
    return bytes((len(raw),)) + raw


def encode(state: WindowState) -> bytes:
    snapshot = state.to_dict()
    intervals = snapshot["intervals"]
    pieces = snapshot["pieces"]
    ads = snapshot["ads"]
    flags = (
        (_FULL if snapshot["full_response"] else 0)
        | (_COUNTED if snapshot["counted"] else 0)
        | (_ROLLING if pieces is not None else 0)
    )
    parts = [
        _HEAD.pack(
            VERSION,
            flags,
            bytes.fromhex(snapshot["listener_id"]),
            bytes.fromhex(snapshot["household_id"]),
            _uuid_bytes(snapshot["episode_id"]),
            snapshot["start_us"],
            snapshot["first_us"],
            len(intervals),
            len(pieces) if pieces is not None else 0,
            len(ads),
        ),
        _text(snapshot["first_country"]),
        _text(snapshot["app"]),
        _text(snapshot["device_class"]),
        _text(snapshot["os"]),
    ]
    parts.extend(_text(slot) for slot in ads)
    parts.extend(_PAIR.pack(first, last) for first, last in intervals)
    for time_us, country, first, last, full in pieces or ():
        parts.append(_PIECE.pack(time_us, first, last, full))
        parts.append(_text(country))
    return b"".join(parts)


def decode(blob: bytes) -> WindowState:
    (
        version,
        flags,
        listener_id,
        household_id,
        episode,
        start_us,
        first_us,
        n_intervals,
        n_pieces,
        n_ads,
    ) = _HEAD.unpack_from(blob)
    if version != VERSION:
        raise ValueError(f"counting state version {version} is not {VERSION}")
    offset = _HEAD.size
    texts: list[str] = []
    for _ in range(4 + n_ads):
        length = blob[offset]
        texts.append(blob[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    intervals = []
    for _ in range(n_intervals):
        intervals.append(_PAIR.unpack_from(blob, offset))
        offset += _PAIR.size
    pieces: list[tuple[int, str, int, int, bool]] | None = None
    if flags & _ROLLING:
        pieces = []
        for _ in range(n_pieces):
            time_us, first, last, full = _PIECE.unpack_from(blob, offset)
            offset += _PIECE.size
            length = blob[offset]
            country = blob[offset + 1 : offset + 1 + length].decode()
            offset += 1 + length
            pieces.append((time_us, country, first, last, bool(full)))
    return WindowState.from_dict(
        {
            "listener_id": listener_id.hex(),
            "household_id": household_id.hex(),
            "episode_id": _uuid_text(episode),
            "start_us": start_us,
            "first_us": first_us,
            "first_country": texts[0],
            "app": texts[1],
            "device_class": texts[2],
            "os": texts[3],
            "intervals": intervals,
            "full_response": bool(flags & _FULL),
            "counted": bool(flags & _COUNTED),
            "ads": texts[4:],
            "pieces": pieces,
        }
    )
