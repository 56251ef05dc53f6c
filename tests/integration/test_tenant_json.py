"""The same tenant flows as JSON through Envoy's transcoder, as a browser calls them."""

from __future__ import annotations

from typing import Any

import httpx

from devstack.stack import Stack
from tests.support import PASSWORD, unique_slug


def auth(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def error_reason(body: dict[str, Any]) -> str:
    for detail in body.get("details", []):
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            return str(detail["reason"])
    raise AssertionError(f"no ErrorInfo in {body}")


async def test_tenant_flow_as_json(http: httpx.AsyncClient, stack: Stack) -> None:
    slug = unique_slug("json")
    created = await http.post(
        "/api/v1/tenants",
        json={"tenant": {"slug": slug, "displayName": "JSON Network"}},
        headers=auth(stack.admin_token),
    )
    assert created.status_code == 200, created.text
    body = created.json()
    tenant_id, owner_key = body["tenant"]["id"], body["apiKeySecret"]
    assert body["apiKey"]["scopes"] == ["API_KEY_SCOPE_OWNER"]

    user = await http.post(
        "/api/v1/users",
        json={"user": {"email": "ana@example.com", "role": "ROLE_ADMIN"}, "password": PASSWORD},
        headers=auth(owner_key),
    )
    assert user.status_code == 200, user.text
    user_id = user.json()["user"]["id"]

    signed_in = await http.post(
        "/api/v1/auth:login",
        json={"tenantSlug": slug, "email": "ana@example.com", "password": PASSWORD},
    )
    assert signed_in.status_code == 200, signed_in.text
    token = signed_in.json()["accessToken"]
    assert signed_in.json()["tokenType"] == "Bearer"

    me = await http.get(f"/api/v1/users/{user_id}", headers=auth(token))
    assert me.json()["user"]["email"] == "ana@example.com"

    key = await http.post(
        "/api/v1/apiKeys",
        json={
            "apiKey": {
                "displayName": "ingest",
                "scopes": ["API_KEY_SCOPE_INGEST", "API_KEY_SCOPE_READ"],
            }
        },
        headers=auth(token),
    )
    assert key.status_code == 200, key.text
    key_id, secret = key.json()["apiKey"]["id"], key.json()["secret"]

    listed = await http.get("/api/v1/apiKeys", params={"pageSize": 10}, headers=auth(token))
    assert key_id in [k["id"] for k in listed.json()["apiKeys"]]
    assert all("secret" not in k for k in listed.json()["apiKeys"])

    tenant = await http.get(f"/api/v1/tenants/{tenant_id}", headers=auth(secret))
    assert tenant.status_code == 200
    revoked = await http.post(f"/api/v1/apiKeys/{key_id}:revoke", json={}, headers=auth(token))
    assert revoked.json()["apiKey"]["state"] == "API_KEY_STATE_REVOKED"

    refused = await http.get(f"/api/v1/tenants/{tenant_id}", headers=auth(secret))
    assert refused.status_code == 401
    assert refused.json()["code"] == 16
    assert error_reason(refused.json()) == "CREDENTIALS_INVALID"

    settings = await http.patch(
        f"/api/v1/tenants/{tenant_id}",
        params={"updateMask": "settings.timeZone"},
        json={"settings": {"timeZone": "Europe/Berlin"}},
        headers=auth(token),
    )
    assert settings.status_code == 200, settings.text
    assert settings.json()["tenant"]["settings"]["timeZone"] == "Europe/Berlin"
