"""What the gateway's strict JSON check costs on the ingestion JSON path.

Starts a platform with durable PostgreSQL and two Envoys rendered alike in front of it,
one with the check and one without (`strict_json_bodies=False`, what
PODMESH_GATEWAY_STRICT_JSON=false renders). Posts 5,000-record ingest batches through
each in alternating rounds, so both see the same database, and prints records/s both
ways with their ratio, and each Envoy's CPU time per request (/proc utime + stime).

BENCH_SCALE=1.0 sends 40 batches (200,000 records) each way; 0.1 a tenth of that.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from google.protobuf import json_format

from devstack.procs import free_ports
from devstack.stack import (
    DESCRIPTOR_SET,
    GEN_DIR,
    ROOT,
    SERVICES,
    PortPlan,
    Stack,
    ensure_generated,
    envoy_binary,
)
from gateway.envoy_config import parse_endpoint, render_envoy_config
from tests.bench import scale

# `make bench` runs this as a plain module: the generated code is not on the path yet.
ensure_generated()
sys.path.insert(0, str(GEN_DIR))

from podmesh.analytics.v1 import analytics_pb2 as pb  # noqa: E402
from podmesh.catalog.v1 import catalog_pb2_grpc  # noqa: E402
from podmesh.tenant.v1 import tenant_pb2_grpc  # noqa: E402

from tests.analytics_ingest_support import (  # noqa: E402
    api_key,
    batches,
    create_episodes,
    listener_traffic,
)
from tests.support import create_tenant  # noqa: E402

BATCH = 5_000
FULL_BATCHES = 40
ROUNDS = 4
CLIENTS = 4
HOUR_US = 3_600_000_000
PATH = "/api/v1/listenerEvents:ingest"


@dataclass
class Gateway:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    records: int = 0
    requests: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    samples: list[float] = field(default_factory=list)

    def cpu(self) -> float:
        stat = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def envoy(stack: Stack, name: str, strict: bool, workdir: Path) -> Iterator[Gateway]:
    listen, admin = free_ports(2)
    config = render_envoy_config(
        DESCRIPTOR_SET,
        listen_host="127.0.0.1",
        listen_port=listen,
        admin_port=admin,
        upstreams={s: [parse_endpoint(stack.service_addr(s))] for s in SERVICES},
        reflection_upstream=parse_endpoint(stack.reflection_addr),
        access_log_path=str(workdir / f"{name}-access.log"),
        strict_json_bodies=strict,
    )
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(config))
    args = [str(envoy_binary()), "-c", str(config_path), "--disable-hot-restart"]
    # As the stack runs its own.
    args += ["--concurrency", "2", "--log-level", "warning"]
    with (workdir / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield Gateway(name, f"http://127.0.0.1:{listen}", process)
    finally:
        process.terminate()
        process.wait(timeout=30)


async def ingest(http: httpx.AsyncClient, url: str, key: str, body: str) -> int:
    response = await http.post(
        url + PATH,
        content=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    response.raise_for_status()
    answer = response.json()
    return int(answer["acceptedCount"]) + int(answer["duplicateCount"])


async def wait_ready(gateway: Gateway, key: str, body: str) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            try:
                await ingest(http, gateway.url, key, body)
                return
            except httpx.HTTPError:
                if gateway.process.poll() is not None or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def run_round(gateway: Gateway, key: str, bodies: Sequence[str]) -> None:
    queue = list(bodies)
    before = gateway.cpu()
    began = time.perf_counter()

    async def client() -> int:
        sent = 0
        async with httpx.AsyncClient(timeout=120) as http:
            while queue:
                sent += await ingest(http, gateway.url, key, queue.pop())
        return sent

    sent = sum(await asyncio.gather(*(client() for _ in range(CLIENTS))))
    elapsed = time.perf_counter() - began
    gateway.records += sent
    gateway.requests += len(bodies)
    gateway.seconds += elapsed
    gateway.cpu_seconds += gateway.cpu() - before
    gateway.samples.append(sent / elapsed)


async def main() -> None:
    per_mode = max(ROUNDS, round(FULL_BATCHES * scale()))
    per_round = max(1, per_mode // ROUNDS)
    run_dir = ROOT / ".run" / f"bench-strict-json-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    async with Stack(run_dir, ports=PortPlan.free(), fast_postgres=False) as stack:
        async with grpc.aio.insecure_channel(stack.service_addr("tenant")) as channel:
            tenants = tenant_pb2_grpc.TenantServiceStub(channel)
            tenant = await create_tenant(tenants, stack.admin_token, "bench-strict")
            key = await api_key(tenants, tenant.owner_key)
        async with grpc.aio.insecure_channel(stack.gateway_addr) as channel:
            episodes = await create_episodes(
                catalog_pb2_grpc.CatalogServiceStub(channel), tenant.owner_key, 10, 10
            )
        total = (2 * per_round * ROUNDS + 2) * BATCH
        print(f"generating {total:,} requests in {BATCH:,}-record batches", flush=True)
        traffic = listener_traffic(
            episodes, total, start_us=time.time_ns() // 1000 - 3 * HOUR_US, span_us=3 * HOUR_US
        )
        bodies = [
            json_format.MessageToJson(pb.IngestListenerEventsRequest(requests=b), indent=None)
            for b in batches(traffic, BATCH)
        ]
        print(f"batch body: {len(bodies[0]) / 1024 / 1024:.2f} MiB", flush=True)
        workdir = run_dir / "bench-envoys"
        workdir.mkdir(parents=True, exist_ok=True)
        with (
            envoy(stack, "strict", True, workdir) as strict,
            envoy(stack, "lax", False, workdir) as lax,
        ):
            await wait_ready(strict, key, bodies.pop())
            await wait_ready(lax, key, bodies.pop())
            for number in range(ROUNDS):
                # Alternating who goes first, so neither always meets a busier database.
                order = (strict, lax) if number % 2 == 0 else (lax, strict)
                for gateway in order:
                    round_bodies = [bodies.pop() for _ in range(per_round)]
                    await run_round(gateway, key, round_bodies)
                    print(
                        f"round {number + 1} {gateway.name}: {gateway.samples[-1]:,.0f} records/s",
                        flush=True,
                    )
    shutil.rmtree(run_dir, ignore_errors=True)

    on_rate = strict.records / strict.seconds
    off_rate = lax.records / lax.seconds
    on_cpu = strict.cpu_seconds / strict.requests * 1000
    off_cpu = lax.cpu_seconds / lax.requests * 1000
    print(f"{strict.records:,} records each way, {CLIENTS} clients, {ROUNDS} alternating rounds")
    print(f"strict_json_on_records_per_s: {on_rate:.0f}")
    print(f"strict_json_off_records_per_s: {off_rate:.0f}")
    print(f"strict_json_on_vs_off_ratio: {on_rate / off_rate:.3f}")
    print(f"strict_json_envoy_cpu_ms_per_request_on: {on_cpu:.1f}")
    print(f"strict_json_envoy_cpu_ms_per_request_off: {off_cpu:.1f}")
    print(f"strict_json_check_cpu_us_per_record: {(on_cpu - off_cpu) * 1000 / BATCH:.2f}")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
