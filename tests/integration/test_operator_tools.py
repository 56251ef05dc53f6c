"""Operators use the real grpcurl and buf against the running platform."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from devstack.stack import ROOT, Stack

BIN = Path(sys.executable).parent
PODMESH_SERVICES = {
    "podmesh.tenant.v1.TenantService",
    "podmesh.catalog.v1.CatalogService",
    "podmesh.campaign.v1.CampaignService",
    "podmesh.attribution.v1.AttributionService",
    "podmesh.analytics.v1.AnalyticsService",
}


async def run(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def grpcurl(*args: str) -> tuple[int, str]:
    return await run(str(BIN / "grpcurl"), "-plaintext", *args)


async def test_grpcurl_lists_all_five_services_through_the_gateway(stack: Stack) -> None:
    code, output = await grpcurl(stack.gateway_addr, "list")
    assert code == 0, output
    assert set(output.split()) >= PODMESH_SERVICES


async def test_each_service_port_lists_its_own_service(stack: Stack) -> None:
    for service in PODMESH_SERVICES:
        name = service.split(".")[1]
        code, output = await grpcurl(stack.service_addr(name), "list")
        assert code == 0, output
        listed = set(output.split()) & PODMESH_SERVICES
        assert listed == {service}


async def test_grpcurl_describes_and_calls_through_the_gateway(stack: Stack) -> None:
    code, output = await grpcurl(stack.gateway_addr, "describe", "podmesh.tenant.v1.TenantService")
    assert code == 0, output
    assert "rpc CreateTenant" in output
    assert "/api/v1/tenants" in output or "CreateTenantResponse" in output

    slug = f"grpcurl-{stack.gateway_port}"
    code, output = await grpcurl(
        "-H",
        f"authorization: Bearer {stack.admin_token}",
        "-d",
        json.dumps({"tenant": {"slug": slug, "display_name": "From grpcurl"}}),
        stack.gateway_addr,
        "podmesh.tenant.v1.TenantService/CreateTenant",
    )
    assert code == 0, output
    created = json.loads(output)
    assert created["tenant"]["slug"] == slug
    assert created["apiKeySecret"].startswith("pk_")

    code, output = await grpcurl(
        "-H",
        f"authorization: Bearer {created['apiKeySecret']}",
        "-d",
        json.dumps({"tenant_id": created["tenant"]["id"]}),
        stack.gateway_addr,
        "podmesh.tenant.v1.TenantService/GetTenant",
    )
    assert code == 0, output
    assert json.loads(output)["tenant"]["displayName"] == "From grpcurl"


async def test_grpcurl_shows_error_details(stack: Stack) -> None:
    code, output = await grpcurl(
        "-d",
        json.dumps({"tenant": {"slug": "X", "display_name": "bad"}}),
        "-H",
        f"authorization: Bearer {stack.admin_token}",
        stack.gateway_addr,
        "podmesh.tenant.v1.TenantService/CreateTenant",
    )
    assert code != 0
    assert "InvalidArgument" in output
    assert "tenant.slug" in output


async def test_buf_lint_passes() -> None:
    code, output = await run(str(BIN / "buf"), "lint")
    assert code == 0, output
