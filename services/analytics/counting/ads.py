"""Ads delivered (ARCHITECTURE.md section 8, rule 5): which ad slots a counted download delivered.

An ad counts only inside a counted download; callers ask only for those. Then,
against the union of bytes the listener received in the window:

- a dynamically inserted slot is delivered when all of its bytes
  ``[start_byte, end_byte]`` were;
- a baked-in slot that starts in the first quarter of the file (``start_byte <
  size / 4``) is delivered when the first quarter of the file, bytes ``[0,
  size / 4)``, was: the IAB proxy for "the listener got past it";
- any other baked-in slot (later in the file, or the file size unknown) is
  delivered when all of its bytes were, as for a dynamic one;
- a slot without a byte range is never delivered (the catalog fills ranges in
  whenever the sizes allow it).

An ad delivery shares its download's time and breakdown values, so ads
delivered never outnumber downloads in any bucket.
"""

from __future__ import annotations

from .media import AdInsertion, EpisodeMedia
from .ranges import IntervalSet


def delivered_slots(delivered: IntervalSet, media: EpisodeMedia) -> tuple[str, ...]:
    """Ids of ``media``'s ad slots delivered by these bytes, in the catalog's order."""
    size = media.size_bytes
    slots: list[str] = []
    for slot in media.ad_slots:
        if slot.start_byte is None or slot.end_byte is None:
            continue
        if slot.insertion is AdInsertion.BAKED_IN and size > 0 and slot.start_byte * 4 < size:
            # Byte i lies in the first quarter when i < size / 4, i.e. i <= (size - 1) // 4.
            delivered_here = delivered.covers(0, (size - 1) // 4)
        else:
            delivered_here = delivered.covers(slot.start_byte, slot.end_byte)
        if delivered_here:
            slots.append(slot.slot_id)
    return tuple(slots)
