"""The facts about an episode's media file that counting needs (catalog's EpisodeMedia).

:attr:`EpisodeMedia.threshold_bytes` is the IAB one-minute threshold, derived
once per media record:

- ``id3_size_bytes + ceil(bitrate_bps * 60 / 8)`` when the bitrate and the
  ID3 size are both known (an ID3 size of 0 is known: the file has no tag);
- ``None`` otherwise, and also when the episode is shorter than a minute (its
  duration is under 60 s, or the file is no larger than the threshold). ``None``
  means only a complete file counts: see :func:`~.downloads.is_download`.

Unknown values follow the catalog contract: size and bitrate 0, ID3 size and
duration ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

ONE_MINUTE_S = 60


class AdInsertion(IntEnum):
    """How an ad gets into the file; values are podmesh.catalog.v1.AdInsertion."""

    DYNAMIC = 1
    BAKED_IN = 2


@dataclass(frozen=True, slots=True)
class AdSlot:
    """An ad break with its inclusive byte range in the media file.

    A slot without a byte range (``None``) can never be judged delivered.
    """

    slot_id: str
    insertion: AdInsertion
    start_byte: int | None = None
    end_byte: int | None = None

    def __post_init__(self) -> None:
        if (self.start_byte is None) != (self.end_byte is None):
            raise ValueError(f"ad slot {self.slot_id}: give both start_byte and end_byte")
        if (
            self.start_byte is not None
            and self.end_byte is not None
            and (self.start_byte < 0 or self.end_byte < self.start_byte)
        ):
            raise ValueError(f"ad slot {self.slot_id}: bad byte range")


@dataclass(frozen=True, slots=True)
class EpisodeMedia:
    """One episode's media facts, as the catalog resolves them for analytics."""

    episode_id: str
    size_bytes: int = 0
    id3_size_bytes: int | None = None
    bitrate_bps: int = 0
    duration_s: float | None = None
    ad_slots: tuple[AdSlot, ...] = ()
    threshold_bytes: int | None = field(init=False, compare=False)
    """Bytes a listener must receive for a download; ``None``: complete file only."""

    def __post_init__(self) -> None:
        if self.size_bytes < 0 or self.bitrate_bps < 0:
            raise ValueError(f"episode {self.episode_id}: negative size or bitrate")
        if self.id3_size_bytes is not None and self.id3_size_bytes < 0:
            raise ValueError(f"episode {self.episode_id}: negative ID3 size")
        object.__setattr__(self, "threshold_bytes", self._one_minute_threshold())

    def _one_minute_threshold(self) -> int | None:
        if self.bitrate_bps <= 0 or self.id3_size_bytes is None:
            return None
        if self.duration_s is not None and self.duration_s < ONE_MINUTE_S:
            return None
        # ceil(bitrate * 60 / 8) in integers: a fractional byte still has to arrive.
        threshold = self.id3_size_bytes + (self.bitrate_bps * ONE_MINUTE_S + 7) // 8
        if 0 < self.size_bytes <= threshold:
            return None
        return threshold
