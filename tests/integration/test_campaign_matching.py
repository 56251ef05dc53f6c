"""MatchPodcasts on a fixture catalog with seeded analytics: the ranking is stable,
every score is the sum of its weighted components, and the explanations carry the
numbers the scores were computed from."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from podmesh.analytics.v1 import analytics_pb2 as apb
from podmesh.analytics.v1 import analytics_pb2_grpc
from podmesh.campaign.v1 import campaign_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.campaign_support import (
    CampaignStub,
    CatalogStub,
    create_campaign,
    create_inventory,
    create_line_item,
    create_sponsor,
    listener_requests,
)
from tests.support import bearer, create_tenant, violated_fields

F = pb.MatchFactor


def component(match: pb.PodcastMatch, factor: int) -> pb.ScoreComponent:
    return next(c for c in match.components if c.factor == factor)


async def test_ranking_scores_and_explanations(
    campaigns: CampaignStub,
    catalog: CatalogStub,
    gateway_channel: grpc.aio.Channel,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    stack: Stack,
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "match")
    key = tenant.owner_key
    business = await create_inventory(
        catalog, key, episodes=3, categories=("Business/Investing",), title="Money Matters"
    )
    comedy = await create_inventory(
        catalog,
        key,
        episodes=1,
        categories=("Comedy",),
        explicit=True,
        title="Late Laughs",
        description="Stand-up comedy and jokes.",
    )
    analytics = analytics_pb2_grpc.AnalyticsServiceStub(gateway_channel)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    seeded = [
        *listener_requests(business.episodes[0].id, yesterday, 4),
        *listener_requests(business.episodes[1].id, yesterday + timedelta(minutes=5), 2),
        *listener_requests(comedy.episodes[0].id, yesterday, 1),
    ]
    await analytics.IngestListenerEvents(
        apb.IngestListenerEventsRequest(requests=seeded), metadata=bearer(key)
    )

    sponsor = await create_sponsor(campaigns, key)
    campaign = await create_campaign(campaigns, key, sponsor.id, budget=1_000_000)
    await create_line_item(
        campaigns,
        key,
        campaign.id,
        targeting=pb.Targeting(categories=["Business"], exclude_explicit=True),
    )
    request = pb.MatchPodcastsRequest(campaign_id=campaign.id)
    first = await campaigns.MatchPodcasts(request, metadata=bearer(key))
    again = await campaigns.MatchPodcasts(request, metadata=bearer(key))
    assert first == again
    assert [m.podcast_id for m in first.matches] == [business.podcast_id, comedy.podcast_id]

    for match in first.matches:
        assert sum(c.weight for c in match.components) == pytest.approx(1.0)
        assert match.score == pytest.approx(sum(c.contribution for c in match.components))
        for c in match.components:
            assert c.contribution == pytest.approx(c.value * c.weight, abs=1e-6)
            assert c.explanation
        contributions = [c.contribution for c in match.components]
        assert contributions == sorted(contributions, reverse=True)

    top, other = first.matches
    # Sponsor IAB 210 (Food & Drink: Arts) and the targeted Business; the podcast has Business.
    category = component(top, F.MATCH_FACTOR_CATEGORY_FIT)
    assert category.value == pytest.approx(0.5)
    assert category.explanation == "1 of the 2 wanted categories match (Business)"
    size = component(top, F.MATCH_FACTOR_AUDIENCE_SIZE)
    # listener_requests adds, to each batch, one listener who stops before the ad: a
    # download without an ad.
    assert size.explanation.startswith("8 downloads in the last 30 days over 3 episodes: 2.7 per")
    assert size.value == pytest.approx(1.0)
    other_size = component(other, F.MATCH_FACTOR_AUDIENCE_SIZE)
    assert other_size.explanation.startswith("2 downloads in the last 30 days over 1 episodes")
    assert other_size.value == pytest.approx(2 / (8 / 3), abs=1e-4)
    safety = component(other, F.MATCH_FACTOR_BRAND_SAFETY)
    assert safety.value == 0.0
    assert "explicit" in safety.explanation
    slots = component(top, F.MATCH_FACTOR_AVAILABILITY)
    assert re.match(r"6 of 6 slots free over the flight in 3 episodes", slots.explanation)
    assert top.available_slot_count == 6

    # Avails: the estimates of every podcast together; the 10,000 goal is far above.
    assert first.available_impressions == sum(m.estimated_impressions for m in first.matches)
    assert "exceed" in first.goal_warning
    assert str(first.available_impressions) in first.goal_warning

    paged = await campaigns.MatchPodcasts(
        pb.MatchPodcastsRequest(campaign_id=campaign.id, page_size=1), metadata=bearer(key)
    )
    rest = await campaigns.MatchPodcasts(
        pb.MatchPodcastsRequest(
            campaign_id=campaign.id, page_size=1, page_token=paged.next_page_token
        ),
        metadata=bearer(key),
    )
    assert [m.podcast_id for m in [*paged.matches, *rest.matches]] == [
        m.podcast_id for m in first.matches
    ]
    assert not rest.next_page_token
    high = await campaigns.MatchPodcasts(
        pb.MatchPodcastsRequest(campaign_id=campaign.id, min_score=top.score), metadata=bearer(key)
    )
    assert [m.podcast_id for m in high.matches] == [top.podcast_id]

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await campaigns.MatchPodcasts(
            pb.MatchPodcastsRequest(campaign_id=campaign.id, min_score=2), metadata=bearer(key)
        )
    assert violated_fields(bad.value) == ["min_score"]
