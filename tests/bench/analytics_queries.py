"""Benchmark 3 of the analytics issue: dashboard queries on a tenant holding 20 million
listener requests over 90 days, as JSON through Envoy under 32 concurrent clients.

The dashboard request is a 90-day daily series of downloads broken down by app, for
each of the 20 podcasts and for the whole tenant in turn. wrk (32 connections, 2
threads, closed loop) measures it with the report cache as deployed and again with the
analytics service restarted without it, and measures the same way, in the same run,
Envoy's own /ready and the dashboard request refused by the analytics service before
any work (no credentials).

The tenant is filled through the real ingestion path: StreamListenerEvents through
Envoy over several streams, each generating its batches day by day as it sends them
(never all in memory). Requests arriving more than 72 hours after their counting window
closed are stored but left to RebuildCounts, so, like any client loading history, the
seeding ends with a rebuild of the whole range. At full size that is slow: on a 2-core
machine such requests were stored at about 40,000/s and rebuilt at 12,500-21,000/s, so
20,000,000 take 25-35 minutes before the first query.

Starts its own platform with durable PostgreSQL (fsync and synchronous commit on) and
needs wrk on PATH (`make bench` installs it). BENCH_SCALE=1.0 seeds 20,000,000 requests
and measures for 20 s each; BENCH_SCALE=0.1 seeds 2,000,000 and measures for 5 s (the
shortest measurement whatever the scale).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import resource
import shutil
import string
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import grpc
import httpx
from google.protobuf import json_format

from devstack.stack import GEN_DIR, ROOT, PortPlan, Stack, ensure_generated
from tests.bench import scale
from tests.bench.processes import cpu_seconds
from tests.bench.wrk import BenchError, run_wrk

# `make bench` runs this as a plain module: the generated code is not on the path yet.
ensure_generated()
sys.path.insert(0, str(GEN_DIR))

from podmesh.analytics.v1 import analytics_pb2 as pb  # noqa: E402
from podmesh.analytics.v1 import analytics_pb2_grpc  # noqa: E402
from podmesh.catalog.v1 import catalog_pb2_grpc  # noqa: E402
from podmesh.tenant.v1 import tenant_pb2, tenant_pb2_grpc  # noqa: E402

from services.analytics.counting import DAY_US  # noqa: E402
from tests.analytics_ingest_support import (  # noqa: E402
    EpisodeSpec,
    api_key,
    batches,
    create_episodes,
    listener_traffic,
    stamp_us,
    wait_rebuilt,
)
from tests.support import bearer, create_tenant  # noqa: E402

FULL_SIZE = 20_000_000
# A full-size rebuild takes about 12 minutes here.
REBUILD_TIMEOUT_S = 3 * 3600
DAYS = 90
PODCASTS = 20
EPISODES_EACH = 10
STREAMS = 4
BATCH = 5_000
IN_FLIGHT = 4
HOUR_US = 3_600_000_000
# The seeded traffic ends this long before now, a history import's newest requests.
SEED_MARGIN_US = 2 * HOUR_US

CONNECTIONS = 32
THREADS = 2
FULL_SECONDS = 20.0
MIN_SECONDS = 5.0
WARMUP_SECONDS = 3
# Longer than any response here takes: wrk leaves timed-out requests out of its
# latencies, which would flatter the tail.
WRK_TIMEOUT = "30s"
# The layout dashboards ask for (QueryMetricsRequest.view); METRICS_VIEW_POINTS is the
# default layout.
VIEW = "METRICS_VIEW_SERIES"
VIEWS = ("METRICS_VIEW_POINTS", "METRICS_VIEW_SERIES")
CACHE_OFF = {"PODMESH_QUERY_CACHE_BYTES": "0"}

# Per wrk thread (each has its own Lua state): a turn over the paths, and the count of
# answers with another status than expected, which done() sums over the threads.
LUA = string.Template(
    """\
-- One measurement of tests/bench/analytics_queries.py.
local paths = {
$paths
}
$headers
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    turn = 0
    unexpected = 0
end

function request()
    turn = turn % #paths + 1
    return wrk.format("GET", paths[turn])
end

function response(status, headers, body)
    if status ~= $expect then
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
        "wrk_result p50_us=%.0f p95_us=%.0f p99_us=%.0f max_us=%.0f requests=%d " ..
        "duration_us=%d unexpected=%d connect=%d read=%d write=%d timeout=%d\\n",
        latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
        summary.requests, summary.duration, unexpected,
        errors.connect, errors.read, errors.write, errors.timeout))
end
"""
)


def rfc3339(time_us: int) -> str:
    moment = dt.datetime.fromtimestamp(time_us / 1_000_000, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- seeding ------------------------------------------------------------------------------


def stream_batches(
    episodes: Sequence[EpisodeSpec], per_day: int, end_us: int, stream: int
) -> Iterator[list[pb.ListenerRequest]]:
    """One stream's batches: about `per_day` requests in each of the DAYS days before
    end_us, generated as they are sent.

    A day at a time: listener_traffic spaces requests at random, and over 90 days the
    spacing drifts by hours (more the smaller the scale), which would leave the last
    day empty or run into the future, which ingestion refuses. What still drifts past
    end_us is left out.
    """
    days = (
        listener_traffic(
            episodes,
            per_day,
            start_us=end_us - (DAYS - day) * DAY_US,
            span_us=DAY_US,
            seed=stream * 1000 + day,
        )
        for day in range(DAYS)
    )
    records = (
        record
        for record in itertools.chain.from_iterable(days)
        if record.request_time.ToMicroseconds() < end_us
    )
    return batches(records, BATCH)


async def stream(
    stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub,
    key: str,
    source: Iterator[list[pb.ListenerRequest]],
) -> int:
    """Sends every batch with IN_FLIGHT unacknowledged; returns the records accepted."""
    window = asyncio.Semaphore(IN_FLIGHT)

    async def requests() -> AsyncIterator[pb.StreamListenerEventsRequest]:
        for sequence, batch in enumerate(source, start=1):
            await window.acquire()
            yield pb.StreamListenerEventsRequest(sequence=sequence, requests=batch)

    accepted = 0
    async for ack in stub.StreamListenerEvents(requests(), metadata=bearer(key)):
        if ack.rejections or ack.duplicate_count:
            reasons = {pb.RejectionReason.Name(r.reason) for r in ack.rejections}
            raise BenchError(
                f"batch {ack.sequence}: {len(ack.rejections)} rejected ({', '.join(reasons)}), "
                f"{ack.duplicate_count} duplicates: the seed would not be what it claims"
            )
        accepted += ack.accepted_count
        window.release()
    return accepted


async def rebuild(
    stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub, owner_key: str, start_us: int, end_us: int
) -> pb.CountRebuild:
    """Counts the whole range from the raw requests, as a client loading history does."""
    started = await stub.RebuildCounts(
        pb.RebuildCountsRequest(
            count_rebuild=pb.CountRebuild(start_time=stamp_us(start_us), end_time=stamp_us(end_us))
        ),
        metadata=bearer(owner_key),
    )
    job = await wait_rebuilt(
        stub, started.count_rebuild.id, owner_key, poll_s=1.0, timeout_s=REBUILD_TIMEOUT_S
    )
    if job.state == pb.COUNT_REBUILD_STATE_FAILED:
        raise BenchError(f"the rebuild failed: {job.error_message}")
    return job


async def settle(stack: Stack) -> None:
    """Leaves the database as a settled production one would be: statistics for the
    planner, visibility maps and no dead rows from the rollups' upserts (so autovacuum
    does not start during a measurement), and the seed flushed to disk."""
    conn = await asyncpg.connect(stack.owner_dsn)
    try:
        await conn.execute("VACUUM (ANALYZE)")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


# --- the dashboard request ------------------------------------------------------------------


def dashboard_path(podcast_id: str, start_us: int, end_us: int, view: str) -> str:
    query = [("podcastId", podcast_id)] if podcast_id else []
    query += [
        ("startTime", rfc3339(start_us)),
        ("endTime", rfc3339(end_us)),
        ("granularity", "GRANULARITY_DAY"),
        ("breakdown", "DIMENSION_APP"),
        # Listeners are kept per episode and day, not per app: the service refuses them
        # with an app breakdown.
        ("metrics", "METRIC_DOWNLOADS"),
        ("view", view),
    ]
    return "/api/v1/metrics:query?" + urlencode(query)


@dataclass(frozen=True)
class Chart:
    """What a dashboard draws from one answer, in either layout."""

    bucket_starts: list[int]  # epoch seconds
    apps: list[str]
    downloads: list[int]  # per bucket, all apps


def chart(answer: pb.QueryMetricsResponse) -> Chart:
    if answer.bucket_start_times:
        return Chart(
            [t.seconds for t in answer.bucket_start_times],
            [s.dimension_value for s in answer.series],
            [sum(column) for column in zip(*(s.downloads for s in answer.series), strict=True)],
        )
    by_bucket: dict[int, int] = {}
    for point in answer.points:
        seconds = point.bucket_start_time.seconds
        by_bucket[seconds] = by_bucket.get(seconds, 0) + point.downloads
    starts = sorted(by_bucket)
    apps = list(dict.fromkeys(point.dimension_value for point in answer.points))
    return Chart(starts, apps, [by_bucket[s] for s in starts])


def check_chart(path: str, drawn: Chart, start_us: int, today_us: int, whole_tenant: bool) -> None:
    """A 90-day daily series broken down by app, with data: not an error measured."""
    days = [start_us // 1_000_000 + day * DAY_US // 1_000_000 for day in range(DAYS)]
    if drawn.bucket_starts != days:
        raise BenchError(f"{path}: {len(drawn.bucket_starts)} buckets, not the {DAYS} days")
    if len(drawn.apps) < 2 or sum(drawn.downloads) == 0:
        raise BenchError(f"{path}: {sum(drawn.downloads)} downloads over apps {drawn.apps}")
    if not whole_tenant:
        return
    # The whole tenant's traffic covers every day but today's first hours; at a small
    # scale one podcast may have a day without a download.
    empty = [
        rfc3339(start * 1_000_000)
        for start, downloads in zip(drawn.bucket_starts, drawn.downloads, strict=True)
        if downloads == 0 and start * 1_000_000 < today_us
    ]
    if empty:
        raise BenchError(f"{path}: no downloads on {', '.join(empty)}")


async def fetch(
    http: httpx.AsyncClient, path: str, key: str
) -> tuple[pb.QueryMetricsResponse, int]:
    response = await http.get(path, headers={"authorization": f"Bearer {key}"})
    if response.status_code != 200:
        raise BenchError(f"{path}: {response.status_code} {response.text[:300]}")
    return json_format.Parse(response.text, pb.QueryMetricsResponse()), len(response.content)


# --- load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """One wrk measurement, and the CPU the analytics service and Envoy spent on it."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    seconds: float
    analytics_cpu_s: float
    envoy_cpu_s: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    def report(self, name: str) -> None:
        print(f"{name}_p50_ms: {self.p50_ms:.2f}")
        print(f"{name}_p95_ms: {self.p95_ms:.2f}")
        print(f"{name}_p99_ms: {self.p99_ms:.2f}")
        print(f"{name}_max_ms: {self.max_ms:.2f}")
        print(f"{name}_requests_per_s: {self.requests_per_s:.1f}")
        for process, cpu_s in (("analytics", self.analytics_cpu_s), ("envoy", self.envoy_cpu_s)):
            print(f"{name}_{process}_cpu_ms_per_request: {cpu_s / self.requests * 1000:.2f}")


def lua_script(paths: Sequence[str], credential: str | None, expect: int) -> str:
    # JSON string literals are Lua ones too for the ASCII of URLs and keys.
    headers = (
        f'wrk.headers["authorization"] = {json.dumps("Bearer " + credential)}'
        if credential is not None
        else ""
    )
    return LUA.substitute(
        paths="\n".join(f"    {json.dumps(path)}," for path in paths),
        headers=headers,
        expect=expect,
    )


async def wrk(script: Path, url: str, seconds: int) -> dict[str, int]:
    return await run_wrk(
        script, url, seconds, threads=THREADS, connections=CONNECTIONS, request_timeout=WRK_TIMEOUT
    )


async def measure(
    stack: Stack,
    name: str,
    url: str,
    paths: Sequence[str],
    seconds: int,
    *,
    credential: str | None = None,
    expect: int = 200,
) -> Load:
    script = stack.run_dir / f"{name}.lua"
    script.write_text(lua_script(paths, credential, expect))
    await wrk(script, url, WARMUP_SECONDS)
    analytics, envoy = stack.process("analytics"), stack.process("envoy")
    assert analytics is not None
    assert envoy is not None
    before = cpu_seconds(analytics.pid), cpu_seconds(envoy.pid)
    result = await wrk(script, url, seconds)
    load = Load(
        p50_ms=result["p50_us"] / 1000,
        p95_ms=result["p95_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        max_ms=result["max_us"] / 1000,
        requests=result["requests"],
        seconds=result["duration_us"] / 1_000_000,
        analytics_cpu_s=cpu_seconds(analytics.pid) - before[0],
        envoy_cpu_s=cpu_seconds(envoy.pid) - before[1],
    )
    load.report(name)
    return load


# --- the run ------------------------------------------------------------------------------------


async def seed(
    stack: Stack, ingest_key: str, owner_key: str, episodes: Sequence[EpisodeSpec], total: int
) -> None:
    end_us = time.time_ns() // 1000 - SEED_MARGIN_US
    start_us = end_us - DAYS * DAY_US
    per_day = max(1, total // (STREAMS * DAYS))
    print(f"seeding about {per_day * STREAMS * DAYS:,} requests over {STREAMS} streams", flush=True)
    cpu_before = time.process_time()
    began = time.perf_counter()
    async with grpc.aio.insecure_channel(stack.gateway_addr) as gateway:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(gateway)
        accepted = sum(
            await asyncio.gather(
                *(
                    stream(stub, ingest_key, stream_batches(episodes, per_day, end_us, n))
                    for n in range(STREAMS)
                )
            )
        )
        ingest_s = time.perf_counter() - began
        client_cpu_s = time.process_time() - cpu_before
        print(f"rebuilding the counts of {DAYS} days", flush=True)
        began = time.perf_counter()
        job = await rebuild(stub, owner_key, start_us, time.time_ns() // 1000)
        rebuild_s = time.perf_counter() - began
    began = time.perf_counter()
    await settle(stack)
    settle_s = time.perf_counter() - began
    print(f"seed_requests: {accepted}")
    print(f"seed_ingest_seconds: {ingest_s:.1f}")
    print(f"seed_ingest_requests_per_s: {accepted / ingest_s:.0f}")
    print(f"seed_client_cpu_seconds: {client_cpu_s:.1f}")
    print(
        f"seed_client_peak_rss_mb: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
    )
    print(f"seed_rebuild_seconds: {rebuild_s:.1f}")
    print(f"seed_rebuild_raw_requests: {job.raw_requests_scanned}")
    print(f"seed_downloads: {job.downloads_after}")
    print(f"seed_vacuum_analyze_checkpoint_seconds: {settle_s:.1f}")


async def run(stack: Stack, total: int, seconds: int) -> None:
    async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as channel:
        tenants = tenant_pb2_grpc.TenantServiceStub(channel)
        tenant = await create_tenant(tenants, stack.admin_token, "bench")
        ingest_key = await api_key(tenants, tenant.owner_key)
        read_key = await api_key(tenants, tenant.owner_key, scope=tenant_pb2.API_KEY_SCOPE_READ)
    async with grpc.aio.insecure_channel(stack.gateway_addr) as gateway:
        episodes = await create_episodes(
            catalog_pb2_grpc.CatalogServiceStub(gateway), tenant.owner_key, PODCASTS, EPISODES_EACH
        )
    await seed(stack, ingest_key, tenant.owner_key, episodes, total)

    today_us = time.time_ns() // 1000 // DAY_US * DAY_US
    start_us = today_us + DAY_US - DAYS * DAY_US
    podcast_ids = list(dict.fromkeys(episode.podcast_id for episode in episodes))
    # The whole tenant's dashboard last.
    scopes = [*podcast_ids, ""]
    paths = [dashboard_path(scope, start_us, today_us + DAY_US, VIEW) for scope in scopes]
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=120) as http:
        for scope, path in zip(scopes, paths, strict=True):
            answer, _ = await fetch(http, path, read_key)
            check_chart(path, chart(answer), start_us, today_us, whole_tenant=not scope)
        # The whole tenant's dashboard in both layouts: the same numbers, and their sizes.
        drawn: list[Chart] = []
        for view in VIEWS:
            path = dashboard_path("", start_us, today_us + DAY_US, view)
            answer, size = await fetch(http, path, read_key)
            drawn.append(chart(answer))
            check_chart(path, drawn[-1], start_us, today_us, whole_tenant=True)
            print(f"query_response_bytes_{view.removeprefix('METRICS_VIEW_').lower()}: {size}")
        if any(other.downloads != drawn[0].downloads for other in drawn):
            raise BenchError(f"the layouts {', '.join(VIEWS)} disagree on the downloads")

    print(f"query_view: {VIEW}")
    print(f"query_dashboards: {len(paths)}")
    print(f"query_wrk_connections: {CONNECTIONS}")
    print(f"query_wrk_threads: {THREADS}")
    print(f"query_wrk_seconds: {seconds}", flush=True)
    query = await measure(stack, "query", stack.gateway_url, paths, seconds, credential=read_key)
    # The same path through Envoy and the transcoder into the analytics service, refused
    # by its interceptor before any work: the floor for any analytics call.
    refused = await measure(
        stack, "peer_refused_query", stack.gateway_url, paths, seconds, expect=401
    )
    ready = await measure(stack, "peer_envoy_ready", stack.envoy_admin_url, ["/ready"], seconds)

    # The cache's size is read at start: the same service restarted without it.
    await stack.stop_service("analytics")
    await stack.start_service("analytics", env_extra=CACHE_OFF)
    uncached = await measure(
        stack, "query_uncached", stack.gateway_url, paths, seconds, credential=read_key
    )

    print(f"query_vs_refused_throughput: {query.requests_per_s / refused.requests_per_s:.2f}")
    print(f"query_vs_envoy_ready_throughput: {query.requests_per_s / ready.requests_per_s:.2f}")
    print(
        "query_uncached_vs_refused_throughput: "
        f"{uncached.requests_per_s / refused.requests_per_s:.2f}"
    )


async def main() -> None:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not on PATH: `make bench` installs it (Debian package wrk)")
    total = int(FULL_SIZE * scale())
    seconds = round(max(MIN_SECONDS, FULL_SECONDS * scale()))
    run_dir = ROOT / ".run" / f"bench-queries-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    async with Stack(run_dir, ports=PortPlan.free(), fast_postgres=False) as stack:
        await run(stack, total, seconds)
    shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BenchError as error:
        print(f"analytics_queries: {error}", file=sys.stderr)
        sys.exit(1)
