"""The lift's groups from households, and the Lift message, without a stack."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.attribution.lift.control import (
    ControlGroup,
    ExposedHouseholds,
    build_lift,
    campaign_lift,
)
from services.attribution.lift.messages import lift_to_pb
from services.attribution.lift.statistics import (
    GroupCounts,
    LiftEstimate,
    LiftUnavailable,
    estimate_lift,
)
from services.shared.peers import Metadata


def household(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "big")).digest()[:16]


def households(first: int, last: int) -> set[bytes]:
    return {household(n) for n in range(first, last)}


# Exposed: households 0-499; 0-59 visited after an exposure, 0-14 purchased.
EXPOSED = ExposedHouseholds(
    households=households(0, 500), visitors=households(0, 60), purchasers=households(0, 15)
)
# Downloaders: 400-1399. 400-499 also heard the ad: exposed, not control.
DOWNLOADERS = [household(n) for n in range(400, 1400)]
# Site visitors in [start, end + window): 0-99 (exposed ones, whatever the report said) and
# 500-539 and 1390-1419 (the last ten never downloaded).
SITE_VISITORS = households(0, 100) | households(500, 540) | households(1390, 1420)
SITE_PURCHASERS = households(0, 30) | households(500, 510)


def test_control_is_downloaders_without_exposure_with_their_site_events() -> None:
    control = ControlGroup(EXPOSED.households, SITE_VISITORS, SITE_PURCHASERS)
    # Streamed in chunks, as analytics sends them.
    control.add(DOWNLOADERS[:300])
    control.add(DOWNLOADERS[300:])
    assert control.counts() == GroupCounts(households=900, visitors=40 + 10, purchasers=10)


def test_build_lift_compares_the_report_s_exposed_group_with_the_control_group() -> None:
    result = build_lift(EXPOSED, iter(DOWNLOADERS), SITE_VISITORS, SITE_PURCHASERS)
    assert result == estimate_lift(GroupCounts(500, 60, 15), GroupCounts(900, 50, 10))
    assert isinstance(result, LiftEstimate)
    assert result.visits.exposed_rate == 60 / 500
    assert result.visits.control_rate == 50 / 900
    assert result.incremental_visitors == pytest.approx(500 * (60 / 500 - 50 / 900))


def test_a_small_control_group_gives_the_reason() -> None:
    result = build_lift(EXPOSED, DOWNLOADERS[:150], SITE_VISITORS, SITE_PURCHASERS)
    assert result == LiftUnavailable("control group has 50 households; at least 100 needed")


@given(
    st.sets(st.integers(0, 3000), max_size=400),
    st.lists(st.integers(0, 3000), unique=True, max_size=600),
    st.sets(st.integers(0, 3000), max_size=800),
)
def test_an_exposed_household_is_never_control(
    exposed: set[int], downloaded: list[int], visited: set[int]
) -> None:
    control = ControlGroup(
        {household(n) for n in exposed}, {household(n) for n in visited}, frozenset()
    )
    control.add(household(n) for n in downloaded)
    unexposed = set(downloaded) - exposed
    assert control.counts() == GroupCounts(len(unexposed), len(unexposed & visited), 0)


def test_lift_message_carries_every_figure() -> None:
    result = estimate_lift(GroupCounts(5000, 400, 60), GroupCounts(20000, 1000, 160))
    assert isinstance(result, LiftEstimate)
    assert result.purchases is not None
    lift, reason = lift_to_pb(result)
    assert reason == ""
    assert lift is not None
    assert (lift.exposed_households, lift.control_households) == (5000, 20000)
    assert (lift.exposed_visit_rate, lift.control_visit_rate) == (0.08, 0.05)
    assert lift.visit_lift == result.visits.lift
    assert (lift.visit_lift_lower, lift.visit_lift_upper) == (
        result.visits.lift_interval.lower,
        result.visits.lift_interval.upper,
    )
    assert lift.incremental_visitors == result.incremental_visitors
    assert (lift.incremental_visitors_lower, lift.incremental_visitors_upper) == (
        result.incremental_visitors_interval.lower,
        result.incremental_visitors_interval.upper,
    )
    assert (lift.exposed_purchase_rate, lift.control_purchase_rate) == (0.012, 0.008)
    assert lift.purchase_lift == result.purchases.lift
    assert (lift.purchase_lift_lower, lift.purchase_lift_upper) == (
        result.purchases.lift_interval.lower,
        result.purchases.lift_interval.upper,
    )
    assert lift.p_value == result.visits.p_value
    assert lift.purchase_lift_unavailable_reason == ""


def test_lift_message_without_a_purchase_lift_says_why() -> None:
    lift, reason = lift_to_pb(estimate_lift(GroupCounts(5000, 400, 60), GroupCounts(900, 50, 2)))
    assert reason == ""
    assert lift is not None
    assert lift.purchase_lift_unavailable_reason == (
        "control group has 2 purchasers; at least 5 needed for a relative lift"
    )
    assert (lift.purchase_lift, lift.purchase_lift_lower, lift.purchase_lift_upper) == (0, 0, 0)
    assert lift.control_purchase_rate == 2 / 900
    assert lift.visit_lift != 0


def test_unavailable_lift_is_unset_with_its_reason() -> None:
    assert lift_to_pb(LiftUnavailable("control group has 12 households; at least 100 needed")) == (
        None,
        "control group has 12 households; at least 100 needed",
    )


class ChunkedDownloaders:
    """Analytics' answer, in chunks of 256, and what it was asked."""

    def __init__(self, downloaders: list[bytes]) -> None:
        self._downloaders = downloaders
        self.asked: list[tuple[uuid.UUID, ...]] = []

    async def podcast_households(
        self,
        podcast_ids: Sequence[uuid.UUID],
        start: datetime,
        end: datetime,
        credentials: Metadata,
    ) -> AsyncIterator[list[bytes]]:
        self.asked.append(tuple(podcast_ids))
        for i in range(0, len(self._downloaders), 256):
            yield self._downloaders[i : i + 256]


async def test_campaign_lift_streams_the_control_group() -> None:
    source = ChunkedDownloaders(DOWNLOADERS)
    podcast = uuid.uuid4()
    start = datetime(2026, 3, 1, tzinfo=UTC)
    result = await campaign_lift(
        source, (), [podcast], start, start + timedelta(days=7), EXPOSED, SITE_VISITORS,
        SITE_PURCHASERS,
    )  # fmt: skip
    assert result == build_lift(EXPOSED, DOWNLOADERS, SITE_VISITORS, SITE_PURCHASERS)
    assert source.asked == [(podcast,)]
    # A campaign on no podcast has no control group, and analytics is not asked.
    none = await campaign_lift(
        source, (), [], start, start + timedelta(days=7), EXPOSED, SITE_VISITORS, SITE_PURCHASERS
    )
    assert none == LiftUnavailable("control group has 0 households; at least 100 needed")
    assert source.asked == [(podcast,)]
