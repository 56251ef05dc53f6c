"""The bootstrap every service runs: dependencies, interceptors, health,
reflection, metrics, and a graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.shared.auth import CredentialStore, CredentialVerifier, JwtCodec, MethodRule
from services.shared.config import Settings
from services.shared.db import Database
from services.shared.dependencies import DependencyWatch, Probe, standard_probes
from services.shared.inputs import InputRules, receive_limit
from services.shared.interceptors import RequestInterceptor
from services.shared.introspection import RemoteApiKeyVerifier
from services.shared.pagination import PageTokens
from services.shared.telemetry import setup_logging, setup_tracing, start_metrics, tracing_enabled

log = logging.getLogger("podmesh.server")

# Twice the gateway's header limit (DEFAULT_MAX_REQUEST_HEADERS_KB in
# gateway/envoy_config.py): what Envoy lets through, plus the headers it adds, is never
# refused here. grpc's default (8 KiB, then random refusals up to 16 KiB) refused large
# headers Envoy had accepted, and JSON clients got a 429 listing their headers. Soft and
# hard limits are equal: no random refusals.
GRPC_MAX_METADATA_BYTES = 64 * 1024


@dataclass
class Resources:
    """What a service's servicers are built from."""

    settings: Settings
    db: Database
    redis: aioredis.Redis
    jwt: JwtCodec
    page_tokens: PageTokens
    channels: dict[str, aio.Channel] = field(default_factory=dict)

    def channel(self, peer: str) -> aio.Channel:
        """A shared channel to a peer service, by name ("tenant", "catalog", ...)."""
        if peer not in self.channels:
            address = getattr(self.settings, f"{peer}_addr")
            self.channels[peer] = aio.insecure_channel(
                address, options=peer_channel_options(address)
            )
        return self.channels[peer]


# gRPC's default reconnect backoff grows to two minutes: a peer that restarted would be
# unreachable from here long after it serves again. Peers are on the same network.
_RECONNECT_BACKOFF: list[tuple[str, str | int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def peer_channel_options(address: str) -> list[tuple[str, str | int]]:
    """Round robin over a peer's replicas ("ipv4:a,b" or a "dns:///" name for a headless
    Service): calls spread, and a dead replica is skipped. One address keeps pick_first:
    after a restart it reconnects on the next call, where round robin would fail calls
    fast through its reconnect backoff. Either way reconnects are retried within a
    second."""
    if "," in address or address.startswith("dns:"):
        return [("grpc.lb_policy_name", "round_robin"), *_RECONNECT_BACKOFF]
    return list(_RECONNECT_BACKOFF)


Register = Callable[[aio.Server, Resources], Awaitable[None]]
VerifierFactory = Callable[[Resources], CredentialStore]
# Per method, what its requests may be beyond services.shared.inputs' defaults; from the
# settings, since some limits are configurable.
InputRulesFactory = Callable[[Settings], InputRules]


def default_inputs(settings: Settings) -> InputRules:
    return {}


@dataclass(frozen=True)
class ServiceDefinition:
    name: str
    # Fully qualified gRPC service names, e.g. "podmesh.tenant.v1.TenantService".
    service_names: Sequence[str]
    # "/package.Service/Method" -> what a caller needs; undeclared methods are refused.
    rules: Mapping[str, MethodRule]
    register: Register
    # How API keys and access tokens are checked; by default by asking the tenant service.
    api_key_verifier: VerifierFactory | None = None
    # A service with settings of its own subclasses Settings.
    settings_type: type[Settings] = Settings
    inputs: InputRulesFactory = default_inputs


def create_redis(url: str) -> aioredis.Redis:
    # Short timeouts: Redis only ever degrades a feature, it must not stall requests.
    return aioredis.from_url(
        url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=15
    )


def _remote_verifier(resources: Resources) -> CredentialStore:
    return RemoteApiKeyVerifier(resources.channel("tenant"), resources.settings.auth_cache_ttl_s)


async def serve(definition: ServiceDefinition, settings: Settings | None = None) -> None:
    settings = settings or definition.settings_type()
    setup_logging(settings.log_level, definition.name)
    setup_tracing(definition.name)
    async with AsyncExitStack() as stack:
        db = await Database.connect(
            settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
        )
        stack.push_async_callback(db.close)
        redis = create_redis(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        jwt_codec = JwtCodec(settings.jwt_secret.get_secret_value(), settings.jwt_ttl_s)
        resources = Resources(
            settings=settings,
            db=db,
            redis=redis,
            jwt=jwt_codec,
            page_tokens=PageTokens(settings.jwt_secret.get_secret_value().encode()),
        )
        stack.push_async_callback(_close_channels, resources)

        verifier = CredentialVerifier(
            settings.admin_token.get_secret_value(),
            jwt_codec,
            (definition.api_key_verifier or _remote_verifier)(resources),
        )
        interceptors: list[Any] = []
        if tracing_enabled():
            from opentelemetry.instrumentation.grpc import aio_server_interceptor

            interceptors.append(aio_server_interceptor())  # type: ignore[no-untyped-call]
        inputs = definition.inputs(settings)
        interceptors.append(RequestInterceptor(definition.name, definition.rules, verifier, inputs))
        server = aio.server(
            interceptors=interceptors,
            options=[
                # Past this gRPC itself refuses (RESOURCE_EXHAUSTED) before any of our
                # code runs; below it each method's own limit applies.
                ("grpc.max_receive_message_length", receive_limit(inputs)),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_metadata_size", GRPC_MAX_METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", GRPC_MAX_METADATA_BYTES),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        await definition.register(server, resources)
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [*definition.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        address = f"{settings.grpc_host}:{settings.grpc_port}"
        server.add_insecure_port(address)
        start_metrics(settings.metrics_host, settings.metrics_port)
        await server.start()
        for name in ("", *definition.service_names):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        probe_channels: dict[str, aio.Channel] = {}
        stack.push_async_callback(_close_all, probe_channels)
        watch = _watch_dependencies(definition, resources, health_servicer, probe_channels)
        stack.push_async_callback(watch.stop)
        freeze_startup_objects()
        log.info("serving", extra={"fields": {"address": address}})

        await _until_signalled()
        log.info("draining", extra={"fields": {"grace_s": settings.shutdown_grace_s}})
        # Health first, so load balancers stop sending before we stop accepting.
        await health_servicer.enter_graceful_shutdown()
        await server.stop(settings.shutdown_grace_s)
        log.info("stopped")


def freeze_startup_objects() -> None:
    """Moves what startup made (modules, descriptors, settings, pools) out of the
    collector's reach: they live as long as the process, yet every full collection
    would walk them again while ingestion allocates batch after batch."""
    gc.collect()
    gc.freeze()


def _watch_dependencies(
    definition: ServiceDefinition,
    resources: Resources,
    health_servicer: Any,
    probe_channels: dict[str, aio.Channel],
) -> DependencyWatch:
    async def required(up: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if up
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *definition.service_names):
            await health_servicer.set(name, status)

    def probes() -> dict[str, Probe]:
        # Peers are probed over channels of their own: a probe sent while a peer restarts
        # puts its channel into reconnect backoff, and requests on the shared channel
        # would then fail fast for seconds after the peer is back.
        for peer in resources.channels:
            if peer not in probe_channels:
                address = getattr(resources.settings, f"{peer}_addr")
                probe_channels[peer] = aio.insecure_channel(
                    address, options=peer_channel_options(address)
                )
        return standard_probes(resources.db, resources.redis, probe_channels)

    watch = DependencyWatch(definition.name, probes, required)
    watch.start()
    return watch


async def _close_all(channels: dict[str, aio.Channel]) -> None:
    for channel in channels.values():
        await channel.close(None)


async def _close_channels(resources: Resources) -> None:
    for channel in resources.channels.values():
        await channel.close(None)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(definition: ServiceDefinition) -> None:
    import uvloop

    uvloop.run(serve(definition))
