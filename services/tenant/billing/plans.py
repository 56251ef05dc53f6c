"""Plans as data, and the one place the quotas in force are worked out."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from services.tenant.domain import Quota

CURRENCY = "USD"
# Overage is priced per this many events.
OVERAGE_UNIT = 1000


@dataclass(frozen=True)
class PlanQuota:
    max_users: int
    max_api_keys: int
    monthly_events: int
    api_key_requests_per_second: int
    max_podcasts: int


@dataclass(frozen=True)
class Plan:
    name: str
    display_name: str
    # Minor units (cents) of CURRENCY, per month.
    monthly_price: int
    included_events: int
    # Minor units per OVERAGE_UNIT events beyond the included ones; 0: no overage, a
    # plan without it stops ingestion at its events quota instead.
    overage_price_per_unit: int
    quota: PlanQuota
    # Orders plans: moving to a higher rank is an upgrade.
    rank: int

    @property
    def paid(self) -> bool:
        return self.monthly_price > 0

    @property
    def stripe_plan_id(self) -> str:
        # Versioned: changing a price means a new Stripe plan, never editing one in use.
        return f"podmesh-{self.name}-monthly-v1"

    def bill(self, counted_events: int) -> tuple[int, int]:
        """(overage events, projected bill in minor units) for a period's count."""
        overage = max(0, counted_events - self.included_events) if self.paid else 0
        units = -(-overage // OVERAGE_UNIT)
        return overage, self.monthly_price + units * self.overage_price_per_unit


PLANS: dict[str, Plan] = {
    plan.name: plan
    for plan in (
        Plan(
            name="free",
            display_name="Free",
            monthly_price=0,
            included_events=10_000,
            overage_price_per_unit=0,
            quota=PlanQuota(
                max_users=3,
                max_api_keys=5,
                monthly_events=10_000,
                api_key_requests_per_second=20,
                max_podcasts=3,
            ),
            rank=0,
        ),
        Plan(
            name="growth",
            display_name="Growth",
            monthly_price=9_900,
            included_events=1_000_000,
            overage_price_per_unit=5,
            quota=PlanQuota(
                max_users=20,
                max_api_keys=25,
                monthly_events=100_000_000,
                api_key_requests_per_second=200,
                max_podcasts=50,
            ),
            rank=1,
        ),
        Plan(
            name="network",
            display_name="Network",
            monthly_price=49_900,
            included_events=10_000_000,
            overage_price_per_unit=3,
            quota=PlanQuota(
                max_users=100,
                max_api_keys=100,
                monthly_events=1_000_000_000,
                api_key_requests_per_second=1_000,
                max_podcasts=1_000,
            ),
            rank=2,
        ),
    )
}
FREE = PLANS["free"]
# Tenants that never chose a plan: set up by the platform administrator and billed
# outside Stripe, with the platform's default quotas. Nobody can subscribe to it.
MANAGED = Plan(
    name="managed",
    display_name="Managed",
    monthly_price=0,
    included_events=0,
    overage_price_per_unit=0,
    quota=PlanQuota(
        max_users=100,
        max_api_keys=50,
        monthly_events=100_000_000,
        api_key_requests_per_second=200,
        max_podcasts=0,
    ),
    rank=-1,
)


def plan_named(name: str) -> Plan:
    return PLANS.get(name, MANAGED)


class SubscriptionState(enum.StrEnum):
    NONE = "none"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELED = "canceled"


def effective_quota(plan: Plan, overrides: Quota) -> PlanQuota:
    """The plan's quotas, each replaced by the administrator's override when one is set
    (non-zero). Every service reads the result through the tenant's contract."""
    q = plan.quota
    return PlanQuota(
        max_users=overrides.max_users or q.max_users,
        max_api_keys=overrides.max_api_keys or q.max_api_keys,
        monthly_events=overrides.monthly_events or q.monthly_events,
        api_key_requests_per_second=(
            overrides.api_key_requests_per_second or q.api_key_requests_per_second
        ),
        max_podcasts=q.max_podcasts,
    )
