"""A campaign's lift from households: the exposed group as the report found it, the
control group from the households that downloaded the campaign's podcasts.

- Exposed: households with an exposure of the campaign in [start, end); a visitor
  (purchaser) is one with a page view (purchase) within the attribution window after
  an exposure, as the report counts them.
- Control: households with a counted download of an episode of the campaign's
  podcasts in [start, end) and no exposure of the campaign at all (a household that
  both downloaded and heard the ad is exposed, never control). A visitor (purchaser)
  is one with a page view (purchase) on the sponsor's site in [start, end + window).
  That span is at least as long as any exposed household's, so the control rate is
  if anything overstated and the lift understated: the comparison errs on the
  advertiser's side of caution.

Downloads arrive from analytics as a stream of distinct households: each is looked up
once and only counted, so a control group of any size costs no memory.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.attribution.lift.statistics import (
    GroupCounts,
    LiftEstimate,
    LiftUnavailable,
    estimate_lift,
)
from services.shared.peers import Metadata


class Downloaders(Protocol):
    """Where the downloaders come from: analytics (services.attribution.peers.Analytics)."""

    def podcast_households(
        self,
        podcast_ids: Sequence[uuid.UUID],
        start: datetime,
        end: datetime,
        credentials: Metadata,
    ) -> AsyncIterator[list[bytes]]: ...


@dataclass(frozen=True)
class ExposedHouseholds:
    households: AbstractSet[bytes]
    # Subsets of households.
    visitors: AbstractSet[bytes]
    purchasers: AbstractSet[bytes]

    def counts(self) -> GroupCounts:
        return GroupCounts(
            households=len(self.households),
            visitors=len(self.visitors),
            purchasers=len(self.purchasers),
        )


class ControlGroup:
    """Counts the control households among streamed downloaders (each given once)."""

    def __init__(
        self,
        exposed: AbstractSet[bytes],
        site_visitors: AbstractSet[bytes],
        site_purchasers: AbstractSet[bytes],
    ) -> None:
        self._exposed = exposed
        self._visitors = site_visitors
        self._purchasers = site_purchasers
        self._households = 0
        self._visitor_count = 0
        self._purchaser_count = 0

    def add(self, downloaders: Iterable[bytes]) -> None:
        exposed, visitors, purchasers = self._exposed, self._visitors, self._purchasers
        for household in downloaders:
            if household in exposed:
                continue
            self._households += 1
            self._visitor_count += household in visitors
            self._purchaser_count += household in purchasers

    def counts(self) -> GroupCounts:
        return GroupCounts(
            households=self._households,
            visitors=self._visitor_count,
            purchasers=self._purchaser_count,
        )


def build_lift(
    exposed: ExposedHouseholds,
    downloaders: Iterable[bytes],
    site_visitors: AbstractSet[bytes],
    site_purchasers: AbstractSet[bytes],
) -> LiftEstimate | LiftUnavailable:
    """The lift of `exposed` over the unexposed among `downloaders` (distinct
    households), given the sponsor's households with a page view (`site_visitors`) and
    with a purchase (`site_purchasers`) in [start, end + window)."""
    control = ControlGroup(exposed.households, site_visitors, site_purchasers)
    control.add(downloaders)
    return estimate_lift(exposed.counts(), control.counts())


async def campaign_lift(
    downloaders: Downloaders,
    credentials: Metadata,
    podcast_ids: Sequence[uuid.UUID],
    start: datetime,
    end: datetime,
    exposed: ExposedHouseholds,
    site_visitors: AbstractSet[bytes],
    site_purchasers: AbstractSet[bytes],
) -> LiftEstimate | LiftUnavailable:
    """build_lift with the control group streamed from analytics: the households that
    downloaded the campaign's podcasts (`podcast_ids`) in [start, end)."""
    control = ControlGroup(exposed.households, site_visitors, site_purchasers)
    if podcast_ids:
        async for chunk in downloaders.podcast_households(podcast_ids, start, end, credentials):
            control.add(chunk)
    return estimate_lift(exposed.counts(), control.counts())
