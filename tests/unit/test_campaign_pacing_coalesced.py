"""Pacing answers made while callers wait: callers that miss the cache while an answer
is being made for the same tenant generation share it; with the cache off, or after a
change to the tenant, each makes its own; a shared failure is not passed on."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.campaign.pacing import Pacing, PacingCache, PacingReport, PacingStatus

TENANT = uuid.UUID(int=1)
CAMPAIGN = uuid.UUID(int=2)


def report(goal: int) -> PacingReport:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    pacing = Pacing(
        line_item_id=None,
        campaign_id=CAMPAIGN,
        flight_start=start,
        flight_end=start + timedelta(days=30),
        as_of=start,
        elapsed_fraction=0.0,
        goal=goal,
        delivered=0,
        expected=0,
        pace_ratio=0.0,
        status=PacingStatus.NOT_STARTED,
        projected=0,
        spend=None,
    )
    return PacingReport(pacing, [])


class Maker:
    def __init__(self, fail_first: bool = False) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self._fail_first = fail_first

    async def __call__(self) -> PacingReport:
        self.calls += 1
        call = self.calls
        await self.release.wait()
        if self._fail_first and call == 1:
            raise PermissionError("the first caller's credential")
        return report(call)


async def test_callers_that_miss_together_share_one_answer() -> None:
    cache = PacingCache(5.0)
    make = Maker()
    waiting = [asyncio.ensure_future(cache.get_or_make(TENANT, CAMPAIGN, make)) for _ in range(8)]
    await asyncio.sleep(0.01)
    make.release.set()
    answers = await asyncio.gather(*waiting)
    assert make.calls == 1
    assert {id(a) for a in answers} == {id(answers[0])}
    assert await cache.get_or_make(TENANT, CAMPAIGN, make) is answers[0]
    assert make.calls == 1


async def test_without_the_cache_or_after_a_change_each_makes_its_own() -> None:
    off = PacingCache(0.0)
    make = Maker()
    make.release.set()
    await asyncio.gather(*(off.get_or_make(TENANT, CAMPAIGN, make) for _ in range(3)))
    assert make.calls == 3

    cache = PacingCache(5.0)
    changing = Maker()
    first = asyncio.ensure_future(cache.get_or_make(TENANT, CAMPAIGN, changing))
    await asyncio.sleep(0.01)
    cache.forget(TENANT)
    second = asyncio.ensure_future(cache.get_or_make(TENANT, CAMPAIGN, changing))
    await asyncio.sleep(0.01)
    changing.release.set()
    assert (await first).pacing.goal == 1
    assert (await second).pacing.goal == 2
    assert changing.calls == 2


async def test_a_shared_failure_is_not_passed_on() -> None:
    cache = PacingCache(5.0)
    make = Maker(fail_first=True)
    first = asyncio.ensure_future(cache.get_or_make(TENANT, CAMPAIGN, make))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(cache.get_or_make(TENANT, CAMPAIGN, make))
    await asyncio.sleep(0.01)
    make.release.set()
    with pytest.raises(PermissionError):
        await first
    assert (await second).pacing.goal == 2
    assert make.calls == 2
