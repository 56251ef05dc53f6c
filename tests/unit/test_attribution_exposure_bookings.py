"""Which placement an ad delivery belongs to, and what attribution remembers of the
campaign service's answers; and the ids analytics' deliveries get."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from services.attribution.exposures.bookings import SlotBookings, covering
from services.attribution.exposures.domain import analytics_exposure_id, stored_country
from services.attribution.peers import Campaigns, SlotBooking

T0 = datetime(2026, 3, 1, tzinfo=UTC)
SLOT = uuid.uuid4()
TENANT = uuid.uuid4()


def booking(
    start: datetime, end: datetime, *, cancel: datetime | None = None, final: bool = False
) -> SlotBooking:
    return SlotBooking(
        placement_id=uuid.uuid4(),
        line_item_id=uuid.uuid4(),
        campaign_id=uuid.uuid4(),
        ad_slot_id=SLOT,
        podcast_id=uuid.uuid4(),
        episode_id=uuid.uuid4(),
        flight_start=start,
        flight_end=end,
        cancel_time=cancel,
        final=final or cancel is not None,
    )


class FakeCampaigns(Campaigns):
    """The campaign service's answer, and how often it was asked."""

    def __init__(self, bookings: list[SlotBooking]) -> None:
        self.bookings = bookings
        self.calls = 0

    async def slot_bookings(
        self, tenant_id: uuid.UUID, ad_slot_ids: Sequence[uuid.UUID]
    ) -> list[SlotBooking]:
        self.calls += 1
        return [b for b in self.bookings if b.ad_slot_id in ad_slot_ids]


def test_a_flight_covers_its_start_and_not_its_end() -> None:
    b = booking(T0, T0 + timedelta(days=10))
    assert covering([b], T0) == b
    assert covering([b], T0 + timedelta(days=10) - timedelta(microseconds=1)) == b
    assert covering([b], T0 + timedelta(days=10)) is None
    assert covering([b], T0 - timedelta(microseconds=1)) is None


def test_a_cancelled_placement_covers_until_its_cancellation_and_yields_to_a_new_one() -> None:
    cancelled = booking(T0, T0 + timedelta(days=10), cancel=T0 + timedelta(days=4))
    rebooked = booking(T0 + timedelta(days=2), T0 + timedelta(days=12))
    assert covering([cancelled], T0 + timedelta(days=3)) == cancelled
    assert covering([cancelled], T0 + timedelta(days=5)) is None
    assert covering([cancelled, rebooked], T0 + timedelta(days=3)) == rebooked
    assert covering([rebooked, cancelled], T0 + timedelta(days=1)) == cancelled


async def test_final_placements_are_remembered_and_others_asked_again_after_ttl() -> None:
    done = booking(T0, T0 + timedelta(days=5), final=True)
    live = booking(T0 + timedelta(days=5), T0 + timedelta(days=10))
    campaigns = FakeCampaigns([done, live])
    remembered = SlotBookings(campaigns, ttl_s=0.0)
    early, late = T0 + timedelta(days=1), T0 + timedelta(days=6)
    assert await remembered.resolve(TENANT, [(SLOT, early), (SLOT, late)]) == {
        (SLOT, early): done,
        (SLOT, late): live,
    }
    assert campaigns.calls == 1
    # Past the TTL: the completed placement answers from memory, the live one is asked
    # for again (it may have been cancelled meanwhile).
    assert await remembered.resolve(TENANT, [(SLOT, early)]) == {(SLOT, early): done}
    assert campaigns.calls == 1
    campaigns.bookings = [done, replace(live, cancel_time=T0 + timedelta(days=5, hours=1))]
    assert await remembered.resolve(TENANT, [(SLOT, late)]) == {(SLOT, late): None}
    assert campaigns.calls == 2


async def test_a_slot_without_a_covering_placement_is_always_asked_again() -> None:
    campaigns = FakeCampaigns([])
    remembered = SlotBookings(campaigns, ttl_s=3600.0)
    moment = T0 + timedelta(days=1)
    assert await remembered.resolve(TENANT, [(SLOT, moment)]) == {(SLOT, moment): None}
    # Booked a moment later, with a flight that started before the delivery.
    fresh = booking(T0, T0 + timedelta(days=3))
    campaigns.bookings = [fresh]
    assert await remembered.resolve(TENANT, [(SLOT, moment)]) == {(SLOT, moment): fresh}
    assert campaigns.calls == 2
    # Within the TTL, a covered moment needs no call.
    assert await remembered.resolve(TENANT, [(SLOT, moment)]) == {(SLOT, moment): fresh}
    assert campaigns.calls == 2


def test_exposure_ids_are_the_download_and_slot() -> None:
    episode, slot = uuid.uuid4(), uuid.uuid4()
    listener = bytes(range(16))
    first = analytics_exposure_id(episode, listener, T0, slot)
    assert first == analytics_exposure_id(episode, listener, T0.astimezone(), slot)
    assert first.startswith("dl-")
    assert len(first) == 35
    others = {
        analytics_exposure_id(uuid.uuid4(), listener, T0, slot),
        analytics_exposure_id(episode, bytes(16), T0, slot),
        analytics_exposure_id(episode, listener, T0 + timedelta(microseconds=1), slot),
        analytics_exposure_id(episode, listener, T0, uuid.uuid4()),
    }
    assert first not in others
    assert len(others) == 4


def test_unknown_countries_are_empty() -> None:
    assert [stored_country(c) for c in ("ZZ", "de", "", " fr ")] == ["", "DE", "", "FR"]
