"""GetPacing's answers are made once per pacing report while the report lives (the
pacing cache hands one report to every caller for a few seconds), and go with it."""

from __future__ import annotations

import gc
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from services.campaign.domain import AdType, LineItem, Money, PricingModel
from services.campaign.pacing import PacingReport, campaign_pacing, line_item_pacing
from services.campaign.servicer import PacingAnswers

START = datetime(2026, 3, 1, tzinfo=UTC)


def report(goal: int) -> PacingReport:
    zone = ZoneInfo("UTC")
    item = LineItem(
        id=uuid.uuid4(),
        campaign_id=uuid.UUID(int=1),
        display_name="Line",
        ad_type=AdType.DYNAMIC,
        pricing_model=PricingModel.CPM,
        rate=Money("USD", 2500),
        impression_goal=goal,
        flight_start=START,
        flight_end=START + timedelta(days=30),
    )
    as_of = START + timedelta(days=10)
    paced = line_item_pacing(item, {START: 7}, 0, as_of, zone)
    total = campaign_pacing(
        item.campaign_id, START, START + timedelta(days=30), "USD", [(item, paced)], as_of, zone
    )
    return PacingReport(total, [paced])


def test_one_answer_per_living_report() -> None:
    answers = PacingAnswers()
    first, second = report(1000), report(2000)
    answer = answers.answer(first)
    assert answers.answer(first) is answer
    assert answer.pacing.impression_goal == 1000
    assert len(answer.pacing.daily_deliveries) == 10
    assert answer.line_item_pacings[0].delivered_impressions == 7
    other = answers.answer(second)
    assert other is not answer
    assert other.pacing.impression_goal == 2000
    assert len(answers) == 2

    del first
    gc.collect()
    assert len(answers) == 1
    assert answers.answer(second) is other
