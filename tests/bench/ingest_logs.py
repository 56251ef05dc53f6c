"""`podmesh ingest logs` on a 1,000,000-line CloudFront log, against the gRPC ingestion
benchmark's path (pre-serialised batches on 4 streams through Envoy) in the same run,
on the same platform and tenant; and the parser alone, to show it is not the limit.

Starts its own platform with durable PostgreSQL. BENCH_SCALE=0.1 uses 100,000 lines.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, urlsplit

import grpc

from devstack.stack import GEN_DIR, ROOT, PortPlan, Stack, ensure_generated
from tests.bench import scale

# `make bench` runs this as a plain module: the generated code is not on the path yet.
ensure_generated()
sys.path.insert(0, str(GEN_DIR))

from podmesh.analytics.v1 import analytics_pb2 as pb  # noqa: E402
from podmesh.catalog.v1 import catalog_pb2_grpc  # noqa: E402
from podmesh.tenant.v1 import tenant_pb2_grpc  # noqa: E402

from podmesh_sdk.logs import CLOUDFRONT_REQUIRED, ImportOptions, ParseStats, read_records  # noqa: E402
from tests.analytics_ingest_support import (  # noqa: E402
    EpisodeSpec,
    api_key,
    batches,
    create_episodes,
    listener_traffic,
)
from tests.bench.analytics_ingest import BATCH, STREAMS, checkpoint, stream_all  # noqa: E402
from tests.support import create_tenant  # noqa: E402

FULL_SIZE = 1_000_000
HOUR_US = 3_600_000_000
FIELDS = [
    "date",
    "time",
    "x-edge-location",
    "sc-bytes",
    "c-ip",
    "cs-method",
    "cs(Host)",
    "cs-uri-stem",
    "sc-status",
    "cs(Referer)",
    "cs(User-Agent)",
    "cs-uri-query",
    "cs(Cookie)",
    "x-edge-result-type",
    "x-edge-request-id",
    "x-host-header",
    "cs-protocol",
    "cs-bytes",
    "time-taken",
    "x-forwarded-for",
    "ssl-protocol",
    "ssl-cipher",
    "x-edge-response-result-type",
    "cs-protocol-version",
    "fle-status",
    "fle-encrypted-fields",
    "c-port",
    "time-to-first-byte",
    "x-edge-detailed-result-type",
    "sc-content-type",
    "sc-content-len",
    "sc-range-start",
    "sc-range-end",
]
assert set(CLOUDFRONT_REQUIRED) <= set(FIELDS)


def cloudfront_row(record: pb.ListenerRequest, serial: int) -> str:
    moment = record.request_time.ToDatetime()
    url = urlsplit(record.media_url)
    start = end = "-"
    if record.range.startswith("bytes="):
        first = record.range[len("bytes=") :].split("-", 1)[0]
        start, end = first, str(int(first) + max(record.bytes_served, 1) - 1)
    row = dict.fromkeys(FIELDS, "-")
    row |= {
        "date": moment.strftime("%Y-%m-%d"),
        "time": moment.strftime("%H:%M:%S"),
        "x-edge-location": "IAD89-P1",
        "sc-bytes": str(record.bytes_served + 300),
        "c-ip": record.client_ip,
        "cs-method": record.http_method,
        "cs(Host)": "d111111abcdef8.cloudfront.net",
        "cs-uri-stem": url.path,
        "sc-status": str(record.status_code),
        "cs(Referer)": quote(record.referer, safe="/:") or "-",
        "cs(User-Agent)": quote(record.user_agent, safe="/:;,.+") or "-",
        "x-edge-result-type": "Hit",
        "x-edge-request-id": f"bench{serial:012d}",
        "x-host-header": url.netloc,
        "sc-content-len": str(record.bytes_served),
        "sc-range-start": start,
        "sc-range-end": end,
    }
    return "\t".join(row[name] for name in FIELDS)


def write_log(path: Path, records: Iterable[pb.ListenerRequest]) -> int:
    lines = 0
    with gzip.open(path, "wt", compresslevel=6, encoding="utf-8") as out:
        out.write("#Version: 1.0\n#Fields: " + " ".join(FIELDS) + "\n")
        for serial, record in enumerate(records):
            out.write(cloudfront_row(record, serial) + "\n")
            lines += 1
    return lines


def parse_only(path: Path) -> float:
    stats = ParseStats()
    began = time.perf_counter()
    for _ in read_records(path, "cloudfront", ImportOptions(), stats):
        pass
    return stats.lines / (time.perf_counter() - began)


def baseline_bodies(
    episodes: list[EpisodeSpec], total: int, start_us: int, seed: int
) -> list[list[bytes]]:
    """The gRPC benchmark's input: each stream's batches, serialised once."""
    return [
        [
            pb.StreamListenerEventsRequest(requests=batch).SerializeToString()
            for batch in batches(
                listener_traffic(
                    episodes,
                    total // STREAMS,
                    start_us=start_us,
                    span_us=HOUR_US,
                    seed=seed + index,
                ),
                BATCH,
            )
        ]
        for index in range(STREAMS)
    ]


async def timed_baseline(
    gateway: grpc.aio.Channel, key: str, streams: list[list[bytes]]
) -> tuple[int, float]:
    print(f"gRPC baseline: {STREAMS} streams", flush=True)
    began = time.perf_counter()
    acknowledged = sum(
        await asyncio.gather(*(stream_all(gateway, key, bodies) for bodies in streams))
    )
    return acknowledged, time.perf_counter() - began


async def main() -> None:
    total = int(FULL_SIZE * scale())
    run_dir = ROOT / ".run" / f"bench-ingest-logs-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    log = run_dir / "cloudfront.log.gz"
    async with Stack(run_dir / "stack", ports=PortPlan.free(), fast_postgres=False) as stack:
        async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as tenant_channel:
            tenants = tenant_pb2_grpc.TenantServiceStub(tenant_channel)
            tenant = await create_tenant(tenants, stack.admin_token, "bench")
            key = await api_key(tenants, tenant.owner_key)
        async with grpc.aio.insecure_channel(stack.gateway_addr) as gateway:
            episodes = await create_episodes(
                catalog_pb2_grpc.CatalogServiceStub(gateway), tenant.owner_key, 20, 10
            )
            start_us = time.time_ns() // 1000 - 6 * HOUR_US
            print(f"writing a {total:,}-line CloudFront log", flush=True)
            lines = write_log(
                log,
                listener_traffic(
                    episodes, total, start_us=start_us, span_us=3 * HOUR_US, seed=7, by_url=1.0
                ),
            )
            parse_rate = parse_only(log)

            # Half the baseline before the import and half after, so that neither
            # the growing tables nor the machine's load drift favours one side.
            rounds = [
                baseline_bodies(episodes, total // 2, start_us + (3 + r) * HOUR_US, 200 + r * 10)
                for r in range(2)
            ]
            await checkpoint(stack)
            first_acked, first_s = await timed_baseline(gateway, key, rounds[0])
            await checkpoint(stack)

            print(f"podmesh ingest logs: {lines:,} lines", flush=True)
            command = [str(Path(sys.executable).parent / "podmesh"), "--gateway"]
            command += [stack.gateway_url, "--api-key", key, "ingest", "logs"]
            command += ["--format", "cloudfront", "--output", "json", str(log)]
            env = {**os.environ, "PYTHONPATH": str(GEN_DIR)}
            began = time.perf_counter()
            done = await asyncio.to_thread(
                subprocess.run, command, env=env, capture_output=True, text=True, check=True
            )
            cli_seconds = time.perf_counter() - began
            report = json.loads(done.stdout)
            await checkpoint(stack)

            second_acked, second_s = await timed_baseline(gateway, key, rounds[1])
            grpc_rate = (first_acked + second_acked) / (first_s + second_s)

    shutil.rmtree(run_dir, ignore_errors=True)
    cli_rate = report["lines"] / cli_seconds
    print(
        f"imported {report['lines']:,} lines in {cli_seconds:.1f}s: accepted "
        f"{report['accepted']:,}, duplicates {report['duplicates']:,}, rejected "
        f"{report['rejected']}, malformed {report['malformed']}"
    )
    print(f"ingest_logs_lines_per_s: {cli_rate:.0f}")
    print(f"ingest_logs_parse_lines_per_s: {parse_rate:.0f}")
    print(f"ingest_logs_grpc_requests_per_s: {grpc_rate:.0f}")
    print(f"ingest_logs_vs_grpc_ratio: {cli_rate / grpc_rate:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
