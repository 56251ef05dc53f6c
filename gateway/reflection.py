"""Server reflection and health for the whole API, as the gateway routes it.

Each service reflects only its own contract on its own port. Envoy sends every
grpc.reflection call here instead, so `grpcurl <gateway> list` sees all of Podmesh.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from gateway.envoy_config import load_descriptor_set, podmesh_services

log = logging.getLogger("gateway.reflection")

GRACE_S = 5.0


class AsyncHealth(Protocol):
    async def set(self, service: str, status: Any) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...


def _reflection_modules() -> list[Any]:
    """v1alpha, plus v1 where the installed grpcio-reflection ships it."""
    modules: list[Any] = [reflection]
    try:
        from grpc_reflection.v1 import reflection as reflection_v1
    except ImportError:
        pass
    else:
        modules.append(reflection_v1)
    return modules


def build_pool(descriptor_set: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    known = {file.name for file in descriptor_set.file}
    # So that `grpcurl describe` also works for the services this server adds itself.
    for file in (reflection_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR):
        if file.name not in known:
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            pool.Add(proto)
    # protoc --include_imports writes dependencies before their dependents.
    for file_proto in descriptor_set.file:
        pool.Add(file_proto)
    return pool


@dataclass
class ReflectionServer:
    server: grpc.aio.Server
    health: AsyncHealth
    port: int
    service_names: tuple[str, ...]

    async def stop(self, grace: float = GRACE_S) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start(descriptor_set: Path, host: str, port: int) -> ReflectionServer:
    """Start serving; `port` 0 picks a free port (see `ReflectionServer.port`)."""
    descriptors = load_descriptor_set(descriptor_set)
    modules = _reflection_modules()
    service_names = (
        *(service.full_name for service in podmesh_services(descriptors)),
        *(module.SERVICE_NAME for module in modules),
    )
    server = grpc.aio.server()
    pool = build_pool(descriptors)
    for module in modules:
        module.enable_server_reflection(service_names, server, pool=pool)
    # grpc-stubs describes only grpc_health's synchronous servicer.
    health_servicer: AsyncHealth = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # Only this server's own health: Envoy routes grpc.health.v1 here, and answering
    # SERVING for a Podmesh service would vouch for a backend this process cannot see.
    for module in modules:
        await health_servicer.set(module.SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    bound_port = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return ReflectionServer(server, health_servicer, bound_port, service_names)


async def serve(descriptor_set: Path, host: str, port: int) -> None:
    running = await start(descriptor_set, host, port)
    log.info("listening on %s:%d for %s", host, running.port, ", ".join(running.service_names))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
        log.info("shutting down")
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        await running.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.reflection",
        description="Serve reflection and health for every Podmesh service.",
    )
    parser.add_argument("--descriptor-set", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50060)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args.descriptor_set, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
