"""The measurement prefix through the gateway: redirects per second and their p99, and
the share of them analytics stored.

wrk (2 threads, 32 connections) asks the prefix route (`/e/{prefix}/{url}`, Envoy's
Lua filter answering 302 and logging each request over the gRPC access log) and, in
the same run on the same listener, a route answered by Envoy's own `direct_response`
302: the floor (goal: the prefix at >= 0.5x the floor's throughput). Between the two,
`prefix_unlogged_*` is the same Lua filter on a prefix the benchmark's gateway leaves
out of the access log: floor -> unlogged is the Lua filter's cost, unlogged -> prefix
the access log's (Envoy building and sending entries, analytics and PostgreSQL storing
and counting them on the same two cores).
`prefix_logged_ratio` is the requests analytics stored ÷ the redirects Envoy served on
the prefix route (goal 1.0 with Envoy and analytics healthy); Envoy's own counters of
access log entries written and dropped are printed beside it. Last, Envoy is killed
right after a burst of requests: `prefix_lost_on_envoy_kill` is how many of the
redirects it had served never reached analytics (what sat in its one-second buffer).
BENCH_SCALE=1.0 measures 20 s per route, 0.1 measures 5 s.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

import asyncpg
import grpc
import httpx

from devstack.stack import GEN_DIR, REDIRECT_FLOOR_ENV, ROOT, PortPlan, Stack, ensure_generated
from tests.bench import scale
from tests.bench.processes import process_cpu
from tests.bench.wrk import BenchError, run_wrk

# `make bench` runs this as a plain module: the generated code is not on the path yet.
ensure_generated()
sys.path.insert(0, str(GEN_DIR))

from podmesh.tenant.v1 import tenant_pb2_grpc  # noqa: E402

from gateway.prefix_redirect import UNLOGGED_BENCH_PREFIX  # noqa: E402
from services.shared.measurement_prefix import prefix_id  # noqa: E402
from tests.support import create_tenant  # noqa: E402

CONNECTIONS = 32
THREADS = 2
FULL_SECONDS = 20.0
MIN_SECONDS = 5.0
WARMUP_SECONDS = 2
WRK_TIMEOUT = "10s"
# Where a prefix redirect costs: the gateway, the service that logs it, the database.
METERED = ("envoy", "analytics")
FLOOR_PATH = "/_bench/redirect-floor"
# Requests sent one after another just before Envoy is killed.
KILL_BURST = 500
# Longer than the access log's flush interval (1 s) and a batch's store.
SETTLE_S = 5.0
USER_AGENT = "AppleCoreMedia/1.0.0.20E252 (iPhone; U; CPU OS 16_4 like Mac OS X; en_us)"

LUA = """\
local threads = {}
function setup(thread)
    table.insert(threads, thread)
end
function init(args)
    unexpected = 0
end
function request()
    return wrk.format("GET", nil, {["user-agent"] = "%s"})
end
function response(status, headers, body)
    if status ~= 302 then
        unexpected = unexpected + 1
    end
end
function done(summary, latency, requests)
    local unexpected = 0
    for _, thread in ipairs(threads) do
        unexpected = unexpected + thread:get("unexpected")
    end
    local errors = summary.errors
    io.write(string.format(
        "wrk_result p99_us=%%.0f requests=%%d duration_us=%%d unexpected=%%d " ..
        "connect=%%d read=%%d write=%%d timeout=%%d\\n",
        latency:percentile(99), summary.requests, summary.duration, unexpected,
        errors.connect, errors.read, errors.write, errors.timeout))
end
"""


async def wrk(script: Path, url: str, seconds: int) -> dict[str, int]:
    return await run_wrk(
        script, url, seconds, threads=THREADS, connections=CONNECTIONS, request_timeout=WRK_TIMEOUT
    )


async def measure(stack: Stack, name: str, url: str, seconds: int) -> tuple[float, float]:
    """(requests per second, p99 ms) of one route; prints the CPU each request cost
    Envoy, analytics and PostgreSQL, read after what the route sent was stored."""
    script = stack.run_dir / f"{name}.lua"
    script.write_text(LUA % USER_AGENT)
    await wrk(script, url, WARMUP_SECONDS)
    # The warm-up's entries reach analytics before the measurement starts.
    await asyncio.sleep(SETTLE_S)
    before = process_cpu(stack, METERED)
    result = await wrk(script, url, seconds)
    await asyncio.sleep(SETTLE_S)
    spent = cpu_per_request(before, process_cpu(stack, METERED), result["requests"])
    print(f"prefix_{name}_cpu_per_request: {spent}")
    return result["requests"] / (result["duration_us"] / 1e6), result["p99_us"] / 1000


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> str:
    return " ".join(
        f"{name}={(after[name] - before[name]) / max(requests, 1) * 1e6:.0f}us" for name in before
    )


async def envoy_counter(stack: Stack, name: str) -> int:
    async with httpx.AsyncClient(base_url=stack.envoy_admin_url, timeout=10) as admin:
        stats = (await admin.get("/stats", params={"filter": f"^{re.escape(name)}$"})).text
    for line in stats.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


async def stored(stack: Stack, tenant_id: uuid.UUID) -> int:
    conn = await asyncpg.connect(stack.owner_dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM prefix_requests WHERE tenant_id = $1", tenant_id
        )
        return count
    finally:
        await conn.close()


async def settled(stack: Stack, tenant_id: uuid.UUID) -> int:
    """The stored count once it has stopped growing."""
    last = -1
    while True:
        await asyncio.sleep(SETTLE_S)
        now = await stored(stack, tenant_id)
        if now == last:
            return now
        last = now


async def run(stack: Stack, seconds: int) -> None:
    async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as channel:
        tenant = await create_tenant(
            tenant_pb2_grpc.TenantServiceStub(channel), stack.admin_token, "bench"
        )
    tenant_id = uuid.UUID(tenant.id)
    prefix_url = f"{stack.gateway_url}/e/{prefix_id(tenant_id)}/cdn.example.com/show/ep-1.mp3"

    unlogged_url = f"{stack.gateway_url}{UNLOGGED_BENCH_PREFIX}cdn.example.com/show/ep-1.mp3"
    floor_rps, floor_p99 = await measure(stack, "floor", stack.gateway_url + FLOOR_PATH, seconds)
    unlogged_rps, unlogged_p99 = await measure(stack, "unlogged", unlogged_url, seconds)
    served_before = await envoy_counter(stack, "lua.prefix_redirect.errors")
    redirects_before = await envoy_counter(stack, "http.gateway.downstream_rq_3xx")
    prefix_rps, prefix_p99 = await measure(stack, "prefix", prefix_url, seconds)
    served = await envoy_counter(stack, "http.gateway.downstream_rq_3xx") - redirects_before
    if await envoy_counter(stack, "lua.prefix_redirect.errors") != served_before:
        raise BenchError("the prefix filter's Lua script failed during the run")
    logged = await settled(stack, tenant_id)
    written = await envoy_counter(stack, "access_logs.grpc_access_log.logs_written")
    dropped = await envoy_counter(stack, "access_logs.grpc_access_log.logs_dropped")

    print(f"prefix_wrk_connections: {CONNECTIONS}")
    print(f"prefix_wrk_seconds: {seconds}")
    print(f"prefix_floor_redirects_per_s: {floor_rps:.0f}")
    print(f"prefix_floor_redirect_p99_ms: {floor_p99:.2f}")
    print(f"prefix_unlogged_redirects_per_s: {unlogged_rps:.0f}")
    print(f"prefix_unlogged_redirect_p99_ms: {unlogged_p99:.2f}")
    print(f"prefix_unlogged_vs_floor_throughput: {unlogged_rps / floor_rps:.2f}")
    print(f"prefix_redirects_per_s: {prefix_rps:.0f}")
    print(f"prefix_redirect_p99_ms: {prefix_p99:.2f}")
    print(f"prefix_vs_floor_throughput: {prefix_rps / floor_rps:.2f}")
    print(f"prefix_redirects_served: {served}")
    print(f"prefix_requests_stored: {logged}")
    print(f"prefix_envoy_logs_written: {written}")
    print(f"prefix_envoy_logs_dropped: {dropped}")
    print(f"prefix_logged_ratio: {logged / served:.4f}", flush=True)

    # What an Envoy that dies loses: its buffer, up to a flush interval of entries.
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(KILL_BURST):
            response = await client.get(prefix_url, headers={"user-agent": USER_AGENT})
            if response.status_code != 302:
                raise BenchError(f"the prefix answered {response.status_code}")
    envoy = stack.process("envoy")
    assert envoy is not None
    envoy.kill()
    after_kill = await settled(stack, tenant_id)
    print(f"prefix_kill_burst: {KILL_BURST}")
    print(f"prefix_lost_on_envoy_kill: {logged + KILL_BURST - after_kill}")


async def main() -> None:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not on PATH: `make bench` installs it (Debian package wrk)")
    seconds = round(max(MIN_SECONDS, FULL_SECONDS * scale()))
    run_dir = ROOT / ".run" / f"bench-prefix-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ) | {REDIRECT_FLOOR_ENV: FLOOR_PATH}
    async with Stack(run_dir, ports=PortPlan.free(), fast_postgres=False, env=env) as stack:
        await run(stack, seconds)
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
