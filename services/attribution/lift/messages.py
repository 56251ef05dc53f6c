"""A lift estimate as the contract's Lift message, or the reason it is unset."""

from __future__ import annotations

from podmesh.attribution.v1 import attribution_pb2 as pb

from services.attribution.lift.statistics import LiftEstimate, LiftUnavailable


def lift_to_pb(result: LiftEstimate | LiftUnavailable) -> tuple[pb.Lift | None, str]:
    """(CampaignReport.lift, CampaignReport.lift_unavailable_reason)."""
    if isinstance(result, LiftUnavailable):
        return None, result.reason
    visits, purchases = result.visits, result.purchases
    lift = pb.Lift(
        exposed_households=result.exposed_households,
        control_households=result.control_households,
        exposed_visit_rate=visits.exposed_rate,
        control_visit_rate=visits.control_rate,
        visit_lift=visits.lift,
        incremental_visitors=result.incremental_visitors,
        exposed_purchase_rate=result.exposed_purchase_rate,
        control_purchase_rate=result.control_purchase_rate,
        p_value=visits.p_value,
        visit_lift_lower=visits.lift_interval.lower,
        visit_lift_upper=visits.lift_interval.upper,
        incremental_visitors_lower=result.incremental_visitors_interval.lower,
        incremental_visitors_upper=result.incremental_visitors_interval.upper,
        purchase_lift_unavailable_reason=result.purchases_unavailable_reason,
    )
    if purchases is not None:
        lift.purchase_lift = purchases.lift
        lift.purchase_lift_lower = purchases.lift_interval.lower
        lift.purchase_lift_upper = purchases.lift_interval.upper
    return lift, ""
