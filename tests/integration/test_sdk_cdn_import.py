"""CDN log import through the running platform: each format's fixture imported twice
(exact counts; the second import changes nothing), and an import killed halfway then
run again counts every line exactly once."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from podmesh.catalog.v1 import catalog_pb2
from podmesh.tenant.v1 import tenant_pb2_grpc

from devstack.stack import GEN_DIR, Stack
from podmesh_sdk import Client, Credentials
from podmesh_sdk.importer import import_logs
from podmesh_sdk.logs import ImportOptions
from tests.analytics_ingest_support import api_key, counted
from tests.catalog.support import FeedServer
from tests.sdk_support import CDN_FIXTURES, FORMAT_FIXTURES, current_fixture, dated
from tests.support import create_tenant

# format -> (accepted, rejected as unknown episode): what the fixture's records make
EXPECTED = {
    "cloudfront": (5, 1),  # /feed.xml is no episode
    "cloudflare": (4, 1),  # /images/cover.jpg is no episode
    "fastly": (4, 0),
    "nginx": (4, 0),
    "apache": (4, 0),
    "s3": (3, 0),
}
PODMESH = Path(sys.executable).parent / "podmesh"


async def catalogued_tenant(
    stack: Stack, tenants: tenant_pb2_grpc.TenantServiceAsyncStub, feeds: FeedServer
) -> tuple[str, str]:
    """A tenant whose catalog holds the fixtures' episodes (from their feed); its id
    and an ingest key."""
    tenant = await create_tenant(tenants, stack.admin_token, "cdn")
    feed = feeds.serve(f"/{uuid.uuid4().hex}.xml", (CDN_FIXTURES / "feed.xml").read_bytes())
    async with Client(Credentials(stack.gateway_url, tenant.owner_key)) as client:
        await client.catalog.ImportFeed(catalog_pb2.ImportFeedRequest(feed_url=feed))
    return tenant.id, await api_key(tenants, tenant.owner_key)


@pytest.mark.parametrize("format_name", sorted(FORMAT_FIXTURES))
async def test_each_format_imported_twice_counts_once(
    format_name: str,
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    feeds: FeedServer,
    owner_conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    tenant_id, key = await catalogued_tenant(stack, tenants, feeds)
    path = current_fixture(format_name, tmp_path)
    options = ImportOptions(media_host="media.example.com" if format_name == "s3" else "")
    accepted, unknown = EXPECTED[format_name]
    async with Client(Credentials(stack.gateway_url, key)) as client:
        first = await import_logs(client.ingestion(), [path], format_name, options)
        stored = await counted(owner_conn, tenant_id)
        second = await import_logs(client.ingestion(), [path], format_name, options)

    assert first.ok
    assert second.ok
    assert (first.totals.accepted, first.totals.duplicates) == (accepted, 0)
    assert dict(first.totals.rejected_by_reason) == (
        {"UNKNOWN_EPISODE": unknown} if unknown else {}
    )
    assert sum(first.stats.malformed.values()) == 1 + (format_name == "nginx")
    assert stored["raw"] == accepted
    assert (second.totals.accepted, second.totals.duplicates) == (0, accepted)
    assert await counted(owner_conn, tenant_id) == stored


def _cloudfront_lines(count: int) -> bytes:
    header, *rows = [
        line
        for line in (CDN_FIXTURES / "cloudfront.log").read_text().splitlines()
        if line.startswith("#Fields") or "\tmedia.example.com\t" in line
    ]
    yesterday = datetime.now(UTC) - timedelta(days=1)
    out = ["#Version: 1.0", header]
    template = [r for r in rows if "/shows/acme/" in r]
    for index in range(count):
        fields = template[index % len(template)].split("\t")
        fields[14] = f"kill-{index:08d}"
        out.append("\t".join(fields))
    return gzip.compress(dated("\n".join(out) + "\n", yesterday).encode())


async def test_an_import_killed_halfway_and_run_again_counts_exactly(
    stack: Stack,
    tenants: tenant_pb2_grpc.TenantServiceAsyncStub,
    feeds: FeedServer,
    owner_conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    tenant_id, key = await catalogued_tenant(stack, tenants, feeds)
    lines = 20_000
    path = tmp_path / "big.log.gz"
    path.write_bytes(_cloudfront_lines(lines))
    env = {
        **os.environ,
        "PODMESH_GATEWAY": stack.gateway_url,
        "PODMESH_API_KEY": key,
        "XDG_CONFIG_HOME": str(tmp_path),
        "PYTHONPATH": str(GEN_DIR),
    }
    command = [str(PODMESH), "ingest", "logs", "--format", "cloudfront", "--batch-size", "250"]
    command += ["--output", "json", str(path)]
    first = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while (await counted(owner_conn, tenant_id))["raw"] < 2000:
            assert first.returncode is None, "the import ended before it was killed"
            await asyncio.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    stored_at_kill = (await counted(owner_conn, tenant_id))["raw"]
    assert 2000 <= stored_at_kill < lines

    again = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["accepted"] + report["duplicates"] == lines
    assert report["duplicates"] >= stored_at_kill
    assert (await counted(owner_conn, tenant_id))["raw"] == lines
