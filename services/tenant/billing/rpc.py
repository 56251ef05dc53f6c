"""The billing RPCs of TenantService: protobuf to billing calls and back, nothing else."""

from __future__ import annotations

from typing import Any

from podmesh.tenant.v1 import tenant_pb2 as pb
from podmesh.type.v1 import money_pb2

from services.shared.context import current_principal
from services.shared.protobuf import timestamp
from services.shared.validation import parse_uuid
from services.tenant.billing.account import BillingStatus
from services.tenant.billing.plans import (
    CURRENCY,
    OVERAGE_UNIT,
    PLANS,
    Plan,
    PlanQuota,
    SubscriptionState,
)
from services.tenant.billing.service import Billing

STATE_TO_PB = {
    SubscriptionState.NONE: pb.SUBSCRIPTION_STATE_NONE,
    SubscriptionState.ACTIVE: pb.SUBSCRIPTION_STATE_ACTIVE,
    SubscriptionState.PAST_DUE: pb.SUBSCRIPTION_STATE_PAST_DUE,
    SubscriptionState.CANCELED: pb.SUBSCRIPTION_STATE_CANCELED,
}
# Metadata a response carries while the tenant's payment is past due.
MAX_INVOICES = 100


def money(minor_units: int, currency: str = CURRENCY) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, minor_units=minor_units)


def quota_to_pb(quota: PlanQuota) -> pb.EffectiveQuota:
    return pb.EffectiveQuota(
        max_users=quota.max_users,
        max_api_keys=quota.max_api_keys,
        monthly_events=quota.monthly_events,
        api_key_requests_per_second=quota.api_key_requests_per_second,
        max_podcasts=quota.max_podcasts,
    )


def status_to_pb(status: BillingStatus) -> pb.BillingStatus:
    account = status.account
    return pb.BillingStatus(
        plan=account.plan.name,
        subscription_state=STATE_TO_PB[account.state],
        pending_plan=account.pending_plan.name if account.pending_plan else "",
        current_period_start_time=timestamp(account.current_period_start),
        current_period_end_time=timestamp(account.current_period_end),
        past_due_time=timestamp(account.past_due_since),
        grace_end_time=timestamp(status.grace_end),
        ingestion_allowed=status.ingestion_allowed,
        reason=status.reason,
        message=status.message,
    )


def plan_to_pb(plan: Plan) -> pb.Plan:
    return pb.Plan(
        name=plan.name,
        display_name=plan.display_name,
        monthly_price=money(plan.monthly_price),
        included_events=plan.included_events,
        overage_price_per_thousand_events=money(plan.overage_price_per_unit * 1000 // OVERAGE_UNIT),
        quota=quota_to_pb(plan.quota),
    )


class BillingRpcs:
    """Mixed into TenantServicer; `_billing` is set by its constructor."""

    _billing: Billing

    async def ListPlans(self, request: pb.ListPlansRequest, context: Any) -> pb.ListPlansResponse:
        return pb.ListPlansResponse(plans=[plan_to_pb(p) for p in PLANS.values()])

    async def StartSubscription(
        self, request: pb.StartSubscriptionRequest, context: Any
    ) -> pb.StartSubscriptionResponse:
        status = await self._billing.start(
            current_principal(),
            parse_uuid(request.tenant_id, "tenant_id"),
            request.plan,
            request.payment_method.strip(),
        )
        return pb.StartSubscriptionResponse(billing=status_to_pb(status))

    async def ChangeSubscriptionPlan(
        self, request: pb.ChangeSubscriptionPlanRequest, context: Any
    ) -> pb.ChangeSubscriptionPlanResponse:
        status = await self._billing.change_plan(
            current_principal(), parse_uuid(request.tenant_id, "tenant_id"), request.plan
        )
        return pb.ChangeSubscriptionPlanResponse(billing=status_to_pb(status))

    async def CancelSubscription(
        self, request: pb.CancelSubscriptionRequest, context: Any
    ) -> pb.CancelSubscriptionResponse:
        status = await self._billing.cancel(
            current_principal(), parse_uuid(request.tenant_id, "tenant_id")
        )
        return pb.CancelSubscriptionResponse(billing=status_to_pb(status))

    async def ListInvoices(
        self, request: pb.ListInvoicesRequest, context: Any
    ) -> pb.ListInvoicesResponse:
        limit = min(request.page_size, MAX_INVOICES) if request.page_size > 0 else 20
        invoices = await self._billing.invoices(
            current_principal(), parse_uuid(request.tenant_id, "tenant_id"), limit
        )
        return pb.ListInvoicesResponse(
            invoices=[
                pb.Invoice(
                    id=i.id,
                    number=i.number,
                    status=i.status,
                    total=money(i.total, i.currency),
                    create_time=timestamp(i.created),
                    period_start_time=timestamp(i.period_start),
                    period_end_time=timestamp(i.period_end),
                )
                for i in invoices
            ]
        )

    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.GetUsageResponse:
        usage = await self._billing.usage(
            current_principal(), parse_uuid(request.tenant_id, "tenant_id")
        )
        return pb.GetUsageResponse(
            period_start_time=timestamp(usage.period_start),
            period_end_time=timestamp(usage.period_end),
            counted_events=usage.counted,
            included_events=usage.plan.included_events,
            overage_events=usage.overage,
            projected_bill=money(usage.projected_bill),
            reported_events=usage.reported,
            plan=usage.plan.name,
        )

    async def ReportUsage(
        self, request: pb.ReportUsageRequest, context: Any
    ) -> pb.ReportUsageResponse:
        recorded, reported = await self._billing.report_usage(record_only=request.record_only)
        return pb.ReportUsageResponse(recorded_count=recorded, reported_count=reported)

    async def HandleStripeWebhook(
        self, request: pb.HandleStripeWebhookRequest, context: Any
    ) -> pb.HandleStripeWebhookResponse:
        signature = next(
            (str(v) for k, v in (context.invocation_metadata() or ()) if k == "stripe-signature"),
            "",
        )
        await self._billing.handle_webhook(request.body.data, signature)
        return pb.HandleStripeWebhookResponse()
