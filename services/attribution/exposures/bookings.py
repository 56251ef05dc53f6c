"""Which placement booked an ad slot at a moment, from the campaign service.

A placement's line item, campaign, slot and flight never change once it is booked,
and nothing about a completed or cancelled one changes at all, so those answer from
memory for good. A booked or live placement may still be cancelled, which ends what
it covers; it answers from memory for `ttl_s` only. A slot with no covering placement
in memory is always asked again: a placement booked a moment ago (its flight may have
started in the past) must not lose the deliveries it covers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from datetime import datetime

from services.attribution.peers import Campaigns, SlotBooking

# Slots remembered per process; past it the memory starts afresh.
MAX_SLOTS = 100_000

Wanted = tuple[uuid.UUID, datetime]


class SlotBookings:
    def __init__(self, campaigns: Campaigns, ttl_s: float) -> None:
        self._campaigns = campaigns
        self._ttl_s = ttl_s
        # (tenant, slot) -> (fresh until, the slot's placements)
        self._slots: dict[tuple[uuid.UUID, uuid.UUID], tuple[float, list[SlotBooking]]] = {}

    async def resolve(
        self, tenant_id: uuid.UUID, wanted: Iterable[Wanted]
    ) -> dict[Wanted, SlotBooking | None]:
        """The placement that booked each (slot, moment), None for none."""
        now = time.monotonic()
        found: dict[Wanted, SlotBooking | None] = {}
        missing: set[Wanted] = set()
        for slot, moment in set(wanted):
            booking = self._remembered(tenant_id, slot, moment, now)
            if booking is None:
                missing.add((slot, moment))
            else:
                found[(slot, moment)] = booking
        if missing:
            slots = sorted({slot for slot, _ in missing})
            fetched = await self._campaigns.slot_bookings(tenant_id, slots)
            if len(self._slots) + len(slots) > MAX_SLOTS:
                self._slots.clear()
            by_slot: dict[uuid.UUID, list[SlotBooking]] = {slot: [] for slot in slots}
            for booking in fetched:
                by_slot.setdefault(booking.ad_slot_id, []).append(booking)
            fresh_until = time.monotonic() + self._ttl_s
            for slot, bookings in by_slot.items():
                self._slots[(tenant_id, slot)] = (fresh_until, bookings)
            for slot, moment in missing:
                found[(slot, moment)] = covering(by_slot.get(slot, []), moment)
        return found

    def _remembered(
        self, tenant_id: uuid.UUID, slot: uuid.UUID, moment: datetime, now: float
    ) -> SlotBooking | None:
        entry = self._slots.get((tenant_id, slot))
        if entry is None:
            return None
        fresh_until, bookings = entry
        if fresh_until > now:
            return covering(bookings, moment)
        return covering([b for b in bookings if b.final], moment)


def covering(bookings: Iterable[SlotBooking], moment: datetime) -> SlotBooking | None:
    """The placement whose flight covers `moment`. At most one booked, live or
    completed placement covers a slot at any instant (the campaign service's exclusion
    constraint); a cancelled one whose slot was booked again yields to the new one."""
    candidates = sorted(
        (b for b in bookings if b.covers(moment)),
        key=lambda b: (b.cancel_time is not None, b.placement_id),
    )
    return candidates[0] if candidates else None
