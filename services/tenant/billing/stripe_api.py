"""The Stripe calls billing makes, through the official library.

The library is synchronous here (its async transport needs an extra HTTP client), so
each call runs in a worker thread. Every call that creates something carries an
idempotency key: Stripe answers a repeated key with the first result.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import stripe

from services.shared.errors import FailedPrecondition, Unavailable
from services.tenant.billing.plans import CURRENCY, PLANS, Plan

T = TypeVar("T")


@dataclass(frozen=True)
class StripeSubscription:
    id: str
    customer: str
    status: str
    plan_id: str
    item_id: str
    current_period_start: datetime | None
    current_period_end: datetime | None


@dataclass(frozen=True)
class StripeInvoice:
    id: str
    number: str
    status: str
    total: int
    currency: str
    created: datetime
    period_start: datetime | None
    period_end: datetime | None


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value else None


def _plain(obj: Any) -> dict[str, Any]:
    """The library's object as plain nested dicts (it refuses dict methods itself)."""
    return cast(dict[str, Any], obj.to_dict())


def _subscription(obj: Any) -> StripeSubscription:
    sub = _plain(obj)
    item = sub["items"]["data"][0]
    # Newer API versions keep the period on the item, older ones on the subscription.
    start = sub.get("current_period_start") or item.get("current_period_start")
    end = sub.get("current_period_end") or item.get("current_period_end")
    return StripeSubscription(
        id=sub["id"],
        customer=sub["customer"],
        status=sub["status"],
        plan_id=item["plan"]["id"],
        item_id=item["id"],
        current_period_start=_time(start),
        current_period_end=_time(end),
    )


def plan_for_stripe_id(stripe_plan_id: str) -> Plan | None:
    return next((p for p in PLANS.values() if p.stripe_plan_id == stripe_plan_id), None)


class StripeBilling:
    def __init__(self, api_key: str, api_base: str) -> None:
        self._client = (
            stripe.StripeClient(api_key, base_addresses={"api": api_base}, max_network_retries=2)
            if api_key
            else None
        )
        self._plans_ready = False

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._client is None:
            raise FailedPrecondition(
                "billing is not configured on this platform", reason="BILLING_NOT_CONFIGURED"
            )
        try:
            return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
        except (stripe.APIConnectionError, stripe.RateLimitError) as error:
            raise Unavailable(f"Stripe is unreachable: {error.user_message or error}") from None
        except stripe.StripeError as error:
            raise FailedPrecondition(
                f"Stripe refused the request: {error.user_message or error}",
                reason="STRIPE_REFUSED",
            ) from None

    @property
    def client(self) -> stripe.StripeClient:
        assert self._client is not None
        return self._client

    async def ensure_plans(self) -> None:
        """Creates the paid plans in Stripe under their fixed ids, once per process."""
        if self._plans_ready:
            return
        for plan in PLANS.values():
            if not plan.paid:
                continue
            try:
                await self._call(self.client.v1.plans.retrieve, plan.stripe_plan_id)
                continue
            except FailedPrecondition:
                pass
            await self._call(
                self.client.v1.plans.create,
                {
                    "id": plan.stripe_plan_id,
                    "amount": plan.monthly_price,
                    "currency": CURRENCY.lower(),
                    "interval": "month",
                    "product": {"name": f"Podmesh {plan.display_name}"},
                },
                {"idempotency_key": f"plan-{plan.stripe_plan_id}"},
            )
        self._plans_ready = True

    async def create_customer(
        self, tenant_id: str, name: str, payment_method: str, idempotency_key: str
    ) -> str:
        params: dict[str, Any] = {"name": name, "metadata": {"podmesh_tenant_id": tenant_id}}
        if payment_method:
            params["payment_method"] = payment_method
            params["invoice_settings"] = {"default_payment_method": payment_method}
        customer = await self._call(
            self.client.v1.customers.create, params, {"idempotency_key": idempotency_key}
        )
        return str(customer["id"])

    async def create_subscription(
        self, customer: str, plan: Plan, tenant_id: str, idempotency_key: str
    ) -> StripeSubscription:
        await self.ensure_plans()
        sub = await self._call(
            self.client.v1.subscriptions.create,
            {
                "customer": customer,
                "items": [{"plan": plan.stripe_plan_id}],
                "metadata": {"podmesh_tenant_id": tenant_id},
            },
            {"idempotency_key": idempotency_key},
        )
        return _subscription(sub)

    async def change_plan(
        self, subscription: StripeSubscription, plan: Plan, idempotency_key: str
    ) -> StripeSubscription:
        """Switches the subscription's one item to `plan` now. Stripe's default proration
        applies: the unused time of the old plan is credited and the new plan charged
        for the rest of the period, both on the next invoice."""
        await self.ensure_plans()
        sub = await self._call(
            self.client.v1.subscriptions.update,
            subscription.id,
            {"items": [{"id": subscription.item_id, "plan": plan.stripe_plan_id}]},
            {"idempotency_key": idempotency_key},
        )
        return _subscription(sub)

    async def cancel(self, subscription_id: str, idempotency_key: str) -> StripeSubscription:
        sub = await self._call(
            self.client.v1.subscriptions.cancel,
            subscription_id,
            None,
            {"idempotency_key": idempotency_key},
        )
        return _subscription(sub)

    async def subscription(self, subscription_id: str) -> StripeSubscription:
        return _subscription(
            await self._call(self.client.v1.subscriptions.retrieve, subscription_id)
        )

    async def invoices(self, customer: str, limit: int) -> list[StripeInvoice]:
        page = await self._call(
            self.client.v1.invoices.list, {"customer": customer, "limit": limit}
        )
        return [
            StripeInvoice(
                id=inv["id"],
                number=inv.get("number") or "",
                status=inv.get("status") or "",
                total=int(inv.get("total") or 0),
                currency=(inv.get("currency") or CURRENCY).upper(),
                created=_time(inv["created"]) or datetime.now(UTC),
                period_start=_time(inv.get("period_start")),
                period_end=_time(inv.get("period_end")),
            )
            for inv in _plain(page)["data"]
        ]

    async def usage_reported(self, customer: str, usage_key: str) -> str | None:
        """The invoice item already carrying this usage row, if an earlier attempt made it."""
        page = await self._call(
            self.client.v1.invoice_items.list, {"customer": customer, "limit": 100}
        )
        for item in _plain(page)["data"]:
            if (item.get("metadata") or {}).get("podmesh_usage_key") == usage_key:
                return str(item["id"])
        return None

    async def report_usage(
        self,
        customer: str,
        subscription: str,
        events: int,
        amount: int,
        description: str,
        usage_key: str,
    ) -> str:
        """Adds counted events, priced, to the customer's next invoice as an invoice item."""
        item = await self._call(
            self.client.v1.invoice_items.create,
            {
                "customer": customer,
                "subscription": subscription,
                "amount": amount,
                "currency": CURRENCY.lower(),
                "description": description,
                "metadata": {"podmesh_usage_key": usage_key, "podmesh_events": str(events)},
            },
            {"idempotency_key": usage_key},
        )
        return str(item["id"])
