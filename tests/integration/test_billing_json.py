"""Billing over JSON through the gateway, as the dashboard calls it."""

from __future__ import annotations

from typing import TypeAlias

import httpx
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import Stack
from tests.billing_support import CARD
from tests.support import create_tenant

Stub: TypeAlias = "tenant_pb2_grpc.TenantServiceAsyncStub"


async def test_subscribe_and_read_invoices_and_usage_over_json(
    tenants: Stub, stack: Stack, http: httpx.AsyncClient
) -> None:
    tenant = await create_tenant(tenants, stack.admin_token, "json")
    owner = {"authorization": f"Bearer {tenant.owner_key}"}
    base = f"/api/v1/billing/tenants/{tenant.id}"

    plans = await http.get("/api/v1/billing/plans", headers=owner)
    assert plans.status_code == 200
    assert {p["name"] for p in plans.json()["plans"]} == {"free", "growth", "network"}

    started = await http.post(
        f"{base}/subscription:start",
        json={"plan": "growth", "paymentMethod": CARD},
        headers={**owner, "x-request-id": f"json-start-{tenant.id}"},
    )
    assert started.status_code == 200, started.text
    assert started.json()["billing"]["subscriptionState"] == "SUBSCRIPTION_STATE_ACTIVE"

    invoices = (await http.get(f"{base}/invoices", headers=owner)).json()["invoices"]
    # The first month, paid when the subscription started.
    assert [i["status"] for i in invoices] == ["paid"]
    assert invoices[0]["total"] == {"currencyCode": "USD", "minorUnits": "9900"}

    usage = await http.get(f"{base}/usage", headers=owner)
    assert usage.status_code == 200
    assert usage.json()["plan"] == "growth"

    unknown = await http.post(
        f"{base}/subscription:changePlan", json={"plan": "growth", "extra": 1}, headers=owner
    )
    assert unknown.status_code == 400
