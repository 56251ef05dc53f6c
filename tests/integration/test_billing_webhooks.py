"""Stripe webhooks through the gateway: delivered and signed by localstripe itself,
and forged, unsigned or replayed too late (refused, nothing changes)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import TypeAlias

import asyncpg
import httpx
import pytest_asyncio
from podmesh.tenant.v1 import tenant_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.localstripe import API_KEY, LocalStripe
from devstack.stack import Stack
from tests.billing_support import (
    CARD,
    WEBHOOK_PATH,
    request_id,
    signed,
    stripe_get,
    subscription_event,
)
from tests.support import TenantHandle, bearer, create_tenant

Stub: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"
# How long localstripe may take to deliver (it waits a second before sending).
DELIVERY_WITHIN_S = 30.0


@pytest_asyncio.fixture(loop_scope="session")
async def delivering(stack: Stack, localstripe: LocalStripe) -> AsyncIterator[LocalStripe]:
    """localstripe, sending its signed events to the gateway's webhook route."""
    await localstripe.register_webhook(stack.gateway_url + WEBHOOK_PATH)
    yield localstripe


async def _subscribed(
    tenants: Stub, stack: Stack, localstripe: LocalStripe
) -> tuple[TenantHandle, dict[str, str]]:
    tenant = await create_tenant(tenants, stack.admin_token, "hook")
    started = await tenants.StartSubscription(
        pb.StartSubscriptionRequest(tenant_id=tenant.id, plan="growth", payment_method=CARD),
        metadata=bearer(tenant.owner_key) + request_id(),
    )
    assert started.billing.subscription_state == pb.SUBSCRIPTION_STATE_ACTIVE
    customers = await stripe_get(localstripe, "customers", limit=100)
    customer = next(
        c["id"] for c in customers["data"] if c["metadata"]["podmesh_tenant_id"] == tenant.id
    )
    subscription = (await stripe_get(localstripe, "subscriptions", customer=customer))["data"][0]
    return tenant, subscription


async def _billing(tenants: Stub, tenant: TenantHandle) -> pb.BillingStatus:
    response = await tenants.GetTenant(
        pb.GetTenantRequest(tenant_id=tenant.id), metadata=bearer(tenant.owner_key)
    )
    return response.tenant.billing


async def _events(owner_conn: asyncpg.Connection, tenant: TenantHandle) -> list[str]:
    rows = await owner_conn.fetch(
        "SELECT event_id FROM billing_stripe_events WHERE tenant_id = $1", uuid.UUID(tenant.id)
    )
    return [r["event_id"] for r in rows]


async def test_events_localstripe_delivers_change_the_tenants_state(
    tenants: Stub,
    stack: Stack,
    delivering: LocalStripe,
    owner_conn: asyncpg.Connection,
) -> None:
    tenant, subscription = await _subscribed(tenants, stack, delivering)
    # Canceled in Stripe itself (as from Stripe's dashboard): only the webhook tells us.
    async with httpx.AsyncClient() as client:
        response = await client.delete(
            f"{delivering.url}/v1/subscriptions/{subscription['id']}",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    response.raise_for_status()

    deadline = time.monotonic() + DELIVERY_WITHIN_S
    while time.monotonic() < deadline:
        billing = await _billing(tenants, tenant)
        if billing.subscription_state == pb.SUBSCRIPTION_STATE_CANCELED:
            break
        await asyncio.sleep(0.2)
    assert billing.subscription_state == pb.SUBSCRIPTION_STATE_CANCELED
    assert not billing.ingestion_allowed
    assert billing.reason == "SUBSCRIPTION_INACTIVE"
    # Both events arrived signed: the creation and the deletion.
    assert len(await _events(owner_conn, tenant)) >= 1
    audit = await tenants.ListAuditEvents(
        pb.ListAuditEventsRequest(), metadata=bearer(tenant.owner_key)
    )
    assert any(e.actor_type == "stripe" for e in audit.audit_events)


async def test_a_redelivered_event_is_applied_once(
    tenants: Stub,
    stack: Stack,
    localstripe: LocalStripe,
    http: httpx.AsyncClient,
    owner_conn: asyncpg.Connection,
) -> None:
    tenant, subscription = await _subscribed(tenants, stack, localstripe)
    payload = subscription_event(subscription, "customer.subscription.updated")
    for _ in range(2):
        response = await http.post(
            WEBHOOK_PATH,
            content=payload,
            headers={"Stripe-Signature": signed(payload), "Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
    assert len(await _events(owner_conn, tenant)) == 1


async def test_the_objects_state_wins_over_a_late_event(
    tenants: Stub, stack: Stack, localstripe: LocalStripe, http: httpx.AsyncClient
) -> None:
    tenant, subscription = await _subscribed(tenants, stack, localstripe)
    # An old event, delivered late, still carrying the subscription as past due.
    stale = {**subscription, "status": "past_due"}
    payload = subscription_event(stale, "customer.subscription.updated")
    response = await http.post(
        WEBHOOK_PATH,
        content=payload,
        headers={"Stripe-Signature": signed(payload), "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert (await _billing(tenants, tenant)).subscription_state == pb.SUBSCRIPTION_STATE_ACTIVE


async def test_unsigned_forged_and_stale_webhooks_are_refused(
    tenants: Stub,
    stack: Stack,
    localstripe: LocalStripe,
    http: httpx.AsyncClient,
    owner_conn: asyncpg.Connection,
) -> None:
    tenant, subscription = await _subscribed(tenants, stack, localstripe)
    canceled = {**subscription, "status": "canceled"}
    payload = subscription_event(canceled, "customer.subscription.deleted")
    attempts = {
        "unsigned": {},
        "forged": {"Stripe-Signature": signed(payload, secret="whsec_not_the_secret")},
        "too old": {"Stripe-Signature": signed(payload, at=int(time.time()) - 3600)},
        "other body": {"Stripe-Signature": signed(payload + b" ")},
    }
    for name, headers in attempts.items():
        response = await http.post(
            WEBHOOK_PATH,
            content=payload,
            headers={**headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 400, name
    assert await _events(owner_conn, tenant) == []
    assert (await _billing(tenants, tenant)).subscription_state == pb.SUBSCRIPTION_STATE_ACTIVE
