"""Billing against a real localstripe process: plans, subscriptions, permissions."""

from __future__ import annotations

import uuid
from typing import TypeAlias

import asyncpg
import grpc
import pytest
from podmesh.tenant.v1 import tenant_pb2 as pb
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.localstripe import LocalStripe
from devstack.stack import Stack
from tests.billing_support import CARD, request_id, stripe_get
from tests.support import TenantHandle, bearer, create_tenant, create_user, error_info, login

Stub: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"


async def _owner(stub: Stub, stack: Stack) -> TenantHandle:
    return await create_tenant(stub, stack.admin_token, "bill")


async def _tenant(stub: Stub, tenant: TenantHandle) -> pb.Tenant:
    response = await stub.GetTenant(
        pb.GetTenantRequest(tenant_id=tenant.id), metadata=bearer(tenant.owner_key)
    )
    return response.tenant


async def test_plans_are_listed_with_prices_and_quotas(tenants: Stub, stack: Stack) -> None:
    tenant = await _owner(tenants, stack)
    plans = {
        p.name: p
        for p in (
            await tenants.ListPlans(pb.ListPlansRequest(), metadata=bearer(tenant.owner_key))
        ).plans
    }
    assert set(plans) == {"free", "growth", "network"}
    assert plans["growth"].monthly_price.minor_units == 9_900
    assert plans["growth"].monthly_price.currency_code == "USD"
    assert plans["free"].quota.monthly_events == plans["free"].included_events
    assert plans["network"].quota.max_users > plans["growth"].quota.max_users


async def test_quotas_in_force_follow_the_plan_and_the_overrides(
    tenants: Stub, stack: Stack
) -> None:
    tenant = await _owner(tenants, stack)
    managed = await _tenant(tenants, tenant)
    assert managed.billing.plan == "managed"
    assert managed.effective_quota.monthly_events == 100_000_000

    await tenants.StartSubscription(
        pb.StartSubscriptionRequest(tenant_id=tenant.id, plan="free"),
        metadata=bearer(tenant.owner_key) + request_id(),
    )
    free = await _tenant(tenants, tenant)
    assert free.billing.plan == "free"
    assert free.effective_quota.monthly_events == 10_000
    assert free.effective_quota.max_users == 3

    # The administrator's override replaces the plan's value, field by field.
    await tenants.UpdateTenant(
        pb.UpdateTenantRequest(
            tenant=pb.Tenant(id=tenant.id, quota=pb.Quota(max_users=7)),
            update_mask={"paths": ["quota.max_users"]},
        ),
        metadata=bearer(stack.admin_token),
    )
    overridden = await _tenant(tenants, tenant)
    assert overridden.effective_quota.max_users == 7
    assert overridden.effective_quota.monthly_events == 10_000


async def test_subscribe_upgrade_downgrade_cancel(
    tenants: Stub, stack: Stack, localstripe: LocalStripe
) -> None:
    tenant = await _owner(tenants, stack)
    owner = bearer(tenant.owner_key)
    started = await tenants.StartSubscription(
        pb.StartSubscriptionRequest(tenant_id=tenant.id, plan="growth", payment_method=CARD),
        metadata=owner + request_id(),
    )
    assert started.billing.plan == "growth"
    assert started.billing.subscription_state == pb.SUBSCRIPTION_STATE_ACTIVE
    assert started.billing.ingestion_allowed

    customers = await stripe_get(localstripe, "customers", limit=100)
    mine = [c for c in customers["data"] if c["metadata"].get("podmesh_tenant_id") == tenant.id]
    assert len(mine) == 1
    subs = await stripe_get(localstripe, "subscriptions", customer=mine[0]["id"])
    assert [s["plan"]["id"] for s in subs["data"]] == ["podmesh-growth-monthly-v1"]

    upgraded = await tenants.ChangeSubscriptionPlan(
        pb.ChangeSubscriptionPlanRequest(tenant_id=tenant.id, plan="network"),
        metadata=owner + request_id(),
    )
    assert upgraded.billing.plan == "network"
    assert upgraded.billing.pending_plan == ""
    sub = await stripe_get(localstripe, f"subscriptions/{subs['data'][0]['id']}")
    assert sub["plan"]["id"] == "podmesh-network-monthly-v1"
    # The upgrade is prorated: the unused time of the old plan is credited.
    items = await stripe_get(localstripe, "invoiceitems", customer=mine[0]["id"])
    assert any(i["proration"] and i["amount"] < 0 for i in items["data"])

    downgraded = await tenants.ChangeSubscriptionPlan(
        pb.ChangeSubscriptionPlanRequest(tenant_id=tenant.id, plan="growth"),
        metadata=owner + request_id(),
    )
    assert downgraded.billing.plan == "network"
    assert downgraded.billing.pending_plan == "growth"
    sub = await stripe_get(localstripe, f"subscriptions/{sub['id']}")
    assert sub["plan"]["id"] == "podmesh-network-monthly-v1"

    canceled = await tenants.CancelSubscription(
        pb.CancelSubscriptionRequest(tenant_id=tenant.id), metadata=owner + request_id()
    )
    assert canceled.billing.subscription_state == pb.SUBSCRIPTION_STATE_CANCELED
    assert not canceled.billing.ingestion_allowed
    assert canceled.billing.reason == "SUBSCRIPTION_INACTIVE"
    sub = await stripe_get(localstripe, f"subscriptions/{sub['id']}")
    assert sub["status"] == "canceled"

    audit = await tenants.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=owner)
    methods = [e.method.rsplit("/", 1)[-1] for e in audit.audit_events]
    assert methods.count("ChangeSubscriptionPlan") == 2
    assert "StartSubscription" in methods
    assert "CancelSubscription" in methods


async def test_a_retried_request_creates_one_customer_and_one_subscription(
    tenants: Stub, stack: Stack, localstripe: LocalStripe
) -> None:
    tenant = await _owner(tenants, stack)
    retry = bearer(tenant.owner_key) + request_id()
    request = pb.StartSubscriptionRequest(tenant_id=tenant.id, plan="growth", payment_method=CARD)
    first = await tenants.StartSubscription(request, metadata=retry)
    second = await tenants.StartSubscription(request, metadata=retry)
    assert first.billing == second.billing

    customers = await stripe_get(localstripe, "customers", limit=100)
    mine = [c for c in customers["data"] if c["metadata"].get("podmesh_tenant_id") == tenant.id]
    assert len(mine) == 1
    subs = await stripe_get(localstripe, "subscriptions", customer=mine[0]["id"], status="all")
    assert len(subs["data"]) == 1

    # A new request id is a new request: starting twice is refused, not duplicated.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tenants.StartSubscription(request, metadata=bearer(tenant.owner_key) + request_id())
    assert error_info(refused.value).reason == "SUBSCRIPTION_EXISTS"


async def test_only_owners_manage_billing_and_other_tenants_are_not_found(
    tenants: Stub, stack: Stack
) -> None:
    tenant = await _owner(tenants, stack)
    admin = await create_user(tenants, tenant.owner_key, pb.ROLE_ADMIN)
    admin_token = await login(tenants, tenant.slug, admin.email)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await tenants.StartSubscription(
            pb.StartSubscriptionRequest(tenant_id=tenant.id, plan="growth", payment_method=CARD),
            metadata=bearer(admin_token) + request_id(),
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await tenants.CancelSubscription(
            pb.CancelSubscriptionRequest(tenant_id=tenant.id), metadata=bearer(admin_token)
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    other = await _owner(tenants, stack)
    for call in (
        tenants.ListInvoices(
            pb.ListInvoicesRequest(tenant_id=tenant.id), metadata=bearer(other.owner_key)
        ),
        tenants.GetUsage(pb.GetUsageRequest(tenant_id=tenant.id), metadata=bearer(other.owner_key)),
        tenants.StartSubscription(
            pb.StartSubscriptionRequest(tenant_id=tenant.id, plan="growth"),
            metadata=bearer(other.owner_key) + request_id(),
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await call
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_unknown_plan_is_a_field_violation(tenants: Stub, stack: Stack) -> None:
    tenant = await _owner(tenants, stack)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await tenants.StartSubscription(
            pb.StartSubscriptionRequest(tenant_id=tenant.id, plan="platinum"),
            metadata=bearer(tenant.owner_key) + request_id(),
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_tenant_service_holds_users_to_the_plans_quota(
    tenants: Stub, stack: Stack
) -> None:
    tenant = await _owner(tenants, stack)
    await tenants.StartSubscription(
        pb.StartSubscriptionRequest(tenant_id=tenant.id, plan="free"),
        metadata=bearer(tenant.owner_key) + request_id(),
    )
    for _ in range(3):
        await create_user(tenants, tenant.owner_key, pb.ROLE_VIEWER)
    with pytest.raises(grpc.aio.AioRpcError) as exhausted:
        await create_user(tenants, tenant.owner_key, pb.ROLE_VIEWER)
    assert error_info(exhausted.value).reason == "USER_QUOTA_EXCEEDED"
    assert dict(error_info(exhausted.value).metadata)["limit"] == "3"


async def test_a_downgrade_takes_effect_when_the_paid_period_ends(
    tenants: Stub, stack: Stack, localstripe: LocalStripe, owner_conn: asyncpg.Connection
) -> None:
    tenant = await _owner(tenants, stack)
    owner = bearer(tenant.owner_key)
    await tenants.StartSubscription(
        pb.StartSubscriptionRequest(tenant_id=tenant.id, plan="network", payment_method=CARD),
        metadata=owner + request_id(),
    )
    await tenants.ChangeSubscriptionPlan(
        pb.ChangeSubscriptionPlanRequest(tenant_id=tenant.id, plan="growth"),
        metadata=owner + request_id(),
    )
    assert (await _tenant(tenants, tenant)).billing.plan == "network"
    # The paid period is over (localstripe cannot move its clock; the account can).
    await owner_conn.execute(
        "UPDATE billing_accounts SET current_period_end = now() - interval '1 minute'"
        " WHERE tenant_id = $1",
        uuid.UUID(tenant.id),
    )
    await tenants.ReportUsage(pb.ReportUsageRequest(), metadata=bearer(stack.admin_token))

    billing = (await _tenant(tenants, tenant)).billing
    assert (billing.plan, billing.pending_plan) == ("growth", "")
    customers = await stripe_get(localstripe, "customers", limit=100)
    customer = next(
        c["id"] for c in customers["data"] if c["metadata"]["podmesh_tenant_id"] == tenant.id
    )
    subs = await stripe_get(localstripe, "subscriptions", customer=customer)
    assert [s["plan"]["id"] for s in subs["data"]] == ["podmesh-growth-monthly-v1"]
