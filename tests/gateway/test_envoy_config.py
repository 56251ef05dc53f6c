"""The gateway: its Envoy bootstrap, checked by Envoy itself, and reflection for the whole
API, checked with grpcurl directly and through a running Envoy."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import protogen
from gateway import envoy_config, reflection
from gateway.envoy_config import (
    BUFFER_FILTER,
    REFLECTION_CLUSTER,
    Service,
    load_descriptor_set,
    podmesh_services,
    render_envoy_config,
)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENVOY = BIN / "envoy"
GRPCURL = BIN / "grpcurl"
TIMEOUT_S = 30.0
ORIGIN = "https://app.podmesh.test"

T = TypeVar("T")


# --- descriptor sets ----------------------------------------------------------------


@pytest.fixture(scope="session")
def descriptor_set() -> Path:
    if not protogen.DESCRIPTOR_SET.exists():
        protogen.generate()
    return protogen.DESCRIPTOR_SET


@pytest.fixture(scope="session")
def services(descriptor_set: Path) -> list[Service]:
    found = podmesh_services(load_descriptor_set(descriptor_set))
    assert found, "the descriptor set has no podmesh services"
    return found


# (client_streaming, server_streaming, http verbs: primary first, then additional bindings)
PROBE_METHODS: dict[str, tuple[bool, bool, tuple[str, ...]]] = {
    "GetProbe": (False, False, ("get",)),
    "CreateProbe": (False, False, ("post",)),
    "SearchProbes": (False, False, ("get", "post")),
    "DescribeProbe": (False, False, ()),
    "WatchProbes": (False, True, ("get",)),
    "UploadProbes": (True, False, ()),
    "ExchangeProbes": (True, True, ()),
}


@pytest.fixture(scope="session")
def probe_descriptor_set(descriptor_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real contracts plus podmesh.probe.v1, which has every shape of method, so the
    rules hold before the real contracts have streaming RPCs."""
    descriptors = load_descriptor_set(descriptor_set)
    probe = descriptors.file.add(
        name="podmesh/probe/v1/probe.proto",
        package="podmesh.probe.v1",
        syntax="proto3",
        dependency=["google/api/annotations.proto"],
    )
    probe.message_type.add(name="ProbeRequest")
    probe.message_type.add(name="ProbeResponse")
    service = probe.service.add(name="ProbeService")
    for name, (client_streaming, server_streaming, verbs) in PROBE_METHODS.items():
        method = service.method.add(
            name=name,
            input_type=".podmesh.probe.v1.ProbeRequest",
            output_type=".podmesh.probe.v1.ProbeResponse",
            client_streaming=client_streaming,
            server_streaming=server_streaming,
        )
        for index, verb in enumerate(verbs):
            rule = method.options.Extensions[annotations_pb2.http]
            if index:
                rule = rule.additional_bindings.add()
            setattr(rule, verb, f"/api/v1/probes/{name}/{verb}")
            if verb == "post":
                rule.body = "*"
    path = tmp_path_factory.mktemp("probe") / "probe.pb"
    path.write_bytes(descriptors.SerializeToString())
    return path


def render(descriptor_set: Path, **options: Any) -> dict[str, Any]:
    backends = {
        service.backend for service in podmesh_services(load_descriptor_set(descriptor_set))
    }
    return render_envoy_config(
        descriptor_set,
        listen_host="127.0.0.1",
        listen_port=8080,
        admin_port=9901,
        upstreams={backend: [("127.0.0.1", 50051)] for backend in sorted(backends)},
        reflection_upstream=("127.0.0.1", 50060),
        **options,
    )


def connection_manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def grpc_route(config: dict[str, Any], path: str) -> dict[str, Any]:
    """The route Envoy picks for a gRPC request to `path` (first match wins)."""
    for route in connection_manager(config)["route_config"]["virtual_hosts"][0]["routes"]:
        match = route["match"]
        if path == match["path"] if "path" in match else path.startswith(match["prefix"]):
            return dict(route)
    raise AssertionError(f"no route for {path}")


def clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cluster["name"]: cluster for cluster in config["static_resources"]["clusters"]}


def validate_with_envoy(config: dict[str, Any], workdir: Path) -> None:
    path = workdir / "envoy.json"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", path, "--disable-hot-restart", "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the rendered bootstrap -----------------------------------------------------------


def test_envoy_accepts_the_config(descriptor_set: Path, tmp_path: Path) -> None:
    validate_with_envoy(render(descriptor_set, access_log_path=str(tmp_path / "a.log")), tmp_path)


def test_envoy_accepts_every_method_shape(probe_descriptor_set: Path, tmp_path: Path) -> None:
    validate_with_envoy(render(probe_descriptor_set), tmp_path)


def test_every_service_is_routed_to_its_cluster(
    descriptor_set: Path, services: list[Service]
) -> None:
    config = render(descriptor_set)
    (transcoder,) = [
        f["typed_config"]
        for f in connection_manager(config)["http_filters"]
        if f["name"] == "envoy.filters.http.grpc_json_transcoder"
    ]
    assert transcoder["services"] == [service.full_name for service in services]
    for service in services:
        assert service.backend in clusters(config)
        for method in service.methods:
            assert grpc_route(config, service.path(method))["route"]["cluster"] == service.backend
        newer_method = f"/{service.full_name}/NotInThisDescriptorSet"
        assert grpc_route(config, newer_method)["route"]["cluster"] == service.backend


def test_filters_are_in_order(descriptor_set: Path) -> None:
    names = [f["name"] for f in connection_manager(render(descriptor_set))["http_filters"]]
    assert names == [
        "podmesh.prefix_redirect",
        "envoy.filters.http.cors",
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.buffer",
        "podmesh.strict_json",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.router",
    ]


def test_request_bodies_are_capped_on_rest_and_unary_grpc_routes_only(
    probe_descriptor_set: Path,
) -> None:
    config = render(probe_descriptor_set)
    (buffer,) = [
        f for f in connection_manager(config)["http_filters"] if f["name"] == BUFFER_FILTER
    ]
    assert buffer["disabled"] is True
    routes = connection_manager(config)["route_config"]["virtual_hosts"][0]["routes"]
    limits = {
        r["name"]: r["typed_per_filter_config"][BUFFER_FILTER]["config"]["buffer"][
            "max_request_bytes"
        ]
        for r in routes
        if BUFFER_FILTER in r.get("typed_per_filter_config", {})
    }
    assert limits.pop("rest") == envoy_config.DEFAULT_MAX_REQUEST_BODY_BYTES
    for path in envoy_config.PUBLIC_CORS_PATHS:
        assert limits.pop(f"rest {path}") == envoy_config.DEFAULT_MAX_REQUEST_BODY_BYTES
    unary = {
        service.path(method)
        for service in podmesh_services(load_descriptor_set(probe_descriptor_set))
        for method in service.methods
        if not method.streaming
    }
    assert set(limits) == unary
    assert set(limits.values()) == {envoy_config.DEFAULT_MAX_GRPC_UNARY_REQUEST_BYTES}


@pytest.mark.parametrize("which", ["real", "probe"])
def test_streaming_routes_never_time_out(
    which: str, descriptor_set: Path, probe_descriptor_set: Path
) -> None:
    path = descriptor_set if which == "real" else probe_descriptor_set
    config = render(path)
    for service in podmesh_services(load_descriptor_set(path)):
        for method in service.methods:
            action = grpc_route(config, service.path(method))["route"]
            if method.streaming:
                assert action["timeout"] == "0s", service.path(method)
                assert action["idle_timeout"] == "300s", service.path(method)
            else:
                assert action["timeout"] == "30s", service.path(method)
                assert "idle_timeout" not in action


@pytest.mark.parametrize("which", ["real", "probe"])
def test_only_get_methods_are_retried(
    which: str, descriptor_set: Path, probe_descriptor_set: Path
) -> None:
    path = descriptor_set if which == "real" else probe_descriptor_set
    config = render(path)
    for service in podmesh_services(load_descriptor_set(path)):
        for method in service.methods:
            action = grpc_route(config, service.path(method))["route"]
            retried = "retry_policy" in action
            assert retried == (method.idempotent and not method.streaming), service.path(method)
            if retried:
                assert action["retry_policy"]["retry_on"] == "unavailable,reset,connect-failure"
                assert action["retry_policy"]["num_retries"] == 2


def test_http_verbs_are_read_from_the_descriptor(probe_descriptor_set: Path) -> None:
    config = render(probe_descriptor_set)
    retried = {
        name
        for name in PROBE_METHODS
        if "retry_policy" in grpc_route(config, f"/podmesh.probe.v1.ProbeService/{name}")["route"]
    }
    # SearchProbes also answers POST; WatchProbes is a stream.
    assert retried == {"GetProbe"}


def test_reflection_and_health_go_to_the_reflection_cluster(descriptor_set: Path) -> None:
    config = render(descriptor_set)
    for path in (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ):
        action = grpc_route(config, path)["route"]
        assert action["cluster"] == REFLECTION_CLUSTER
        assert action["timeout"] == "0s"


def test_replicas_share_one_cluster(descriptor_set: Path, services: list[Service]) -> None:
    upstreams = {service.backend: [("127.0.0.1", 50051)] for service in services}
    upstreams["tenant"] = [("127.0.0.1", 50051), ("127.0.0.2", 50051)]
    upstreams["analytics"] = [("analytics-0.podmesh", 50055), ("analytics-1.podmesh", 50055)]
    config = render_envoy_config(
        descriptor_set,
        listen_host="0.0.0.0",
        listen_port=8080,
        admin_port=9901,
        upstreams=upstreams,
        reflection_upstream=("127.0.0.1", 50060),
    )
    by_name = clusters(config)
    for name, kind in (("tenant", "STATIC"), ("analytics", "STRICT_DNS")):
        cluster = by_name[name]
        assert cluster["type"] == kind
        endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert [e["endpoint"]["address"]["socket_address"] for e in endpoints] == [
            {"address": host, "port_value": port} for host, port in upstreams[name]
        ]
        assert "grpc_health_check" in cluster["health_checks"][0]
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_a_backend_without_upstreams_is_an_error(
    descriptor_set: Path, services: list[Service]
) -> None:
    with pytest.raises(ValueError, match=services[0].backend):
        render_envoy_config(
            descriptor_set,
            listen_host="127.0.0.1",
            listen_port=8080,
            admin_port=9901,
            upstreams={},
            reflection_upstream=("127.0.0.1", 50060),
        )


def test_cli_writes_the_bootstrap(descriptor_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "gateway" / "envoy.json"
    upstream_args = [
        arg
        for backend in sorted(
            {s.backend for s in podmesh_services(load_descriptor_set(descriptor_set))}
        )
        for arg in ("--upstream", f"{backend}=127.0.0.1:50051")
    ]
    code = envoy_config.main(
        [
            *("--descriptor-set", str(descriptor_set), "--out", str(out)),
            *("--listen-port", "8080", "--admin-port", "9901"),
            *upstream_args,
            *("--upstream", "tenant=[::1]:50061", "--reflection", "127.0.0.1:50060"),
        ]
    )
    assert code == 0
    config = json.loads(out.read_text())
    tenant = clusters(config)["tenant"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["address"] for e in tenant] == [
        "127.0.0.1",
        "::1",
    ]
    assert REFLECTION_CLUSTER in clusters(config)


# --- processes ------------------------------------------------------------------------


def wait_for(
    probe: Callable[[], T | None],
    *,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> T:
    """Poll `probe` until it returns a value, failing fast if `process` dies."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        if process is not None and process.poll() is not None:
            output = log.read_text(errors="replace")[-4000:] if log else ""
            raise AssertionError(f"{what}: exited with {process.returncode}\n{output}")
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {TIMEOUT_S}s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def running(args: Sequence[str | Path], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def listening_port(log: Path) -> int | None:
    found = re.search(r"listening on \S+:(\d+)", log.read_text(errors="replace"))
    return int(found[1]) if found else None


@contextmanager
def reflection_process(
    descriptor_set: Path, log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    args: list[str | Path] = [
        sys.executable,
        *("-m", "gateway.reflection", "--descriptor-set", descriptor_set),
        *("--host", "127.0.0.1", "--port", "0"),
    ]
    with running(args, log) as process:
        port = wait_for(
            lambda: listening_port(log), what="gateway.reflection", process=process, log=log
        )
        yield process, port


async def grpcurl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        GRPCURL,
        *("-plaintext", "-max-time", "10", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    return out.decode()


# --- reflection -------------------------------------------------------------------------


@pytest.fixture
async def reflection_server(descriptor_set: Path) -> AsyncIterator[int]:
    server = await reflection.start(descriptor_set, "127.0.0.1", 0)
    try:
        yield server.port
    finally:
        await server.stop(grace=0)


async def test_reflection_lists_every_service(
    reflection_server: int, services: list[Service]
) -> None:
    listed = (await grpcurl(f"127.0.0.1:{reflection_server}", "list")).split()
    assert "podmesh.tenant.v1.TenantService" in listed
    assert set(listed) >= {service.full_name for service in services}


async def test_reflection_describes_a_service(reflection_server: int) -> None:
    described = await grpcurl(
        f"127.0.0.1:{reflection_server}", "describe", "podmesh.tenant.v1.TenantService"
    )
    assert "rpc CreateTenant" in described


def test_reflection_cli_serves_health_and_stops_on_sigterm(
    descriptor_set: Path, tmp_path: Path
) -> None:
    log = tmp_path / "reflection.log"
    with reflection_process(descriptor_set, log) as (process, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT_S) == 0
    assert "shutting down" in log.read_text()


# --- through Envoy ----------------------------------------------------------------------


@dataclass(frozen=True)
class Gateway:
    url: str
    grpc_target: str
    access_log: Path


@pytest.fixture(scope="module")
def gateway(
    descriptor_set: Path, services: list[Service], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("gateway")
    with reflection_process(descriptor_set, workdir / "reflection.log") as (_, reflection_port):
        upstream = ("127.0.0.1", reflection_port)
        config = render_envoy_config(
            descriptor_set,
            # Port 0 everywhere: Envoy reports what it bound, so no port can be stolen.
            listen_host="127.0.0.1",
            listen_port=0,
            admin_port=0,
            upstreams={service.backend: [upstream] for service in services},
            reflection_upstream=upstream,
            access_log_path=str(workdir / "access.log"),
            cors_allowed_origins=(ORIGIN,),
        )
        config_path = workdir / "envoy.json"
        config_path.write_text(json.dumps(config))
        admin_address = workdir / "admin.address"
        args: list[str | Path] = [
            ENVOY,
            *("-c", config_path, "--disable-hot-restart", "--concurrency", "1"),
            *("--admin-address-path", admin_address, "--log-level", "warn"),
            *("--file-flush-interval-msec", "50"),
        ]
        log = workdir / "envoy.log"
        with running(args, log) as envoy, httpx.Client(timeout=5) as http:

            def admin() -> str | None:
                text = admin_address.read_text().strip() if admin_address.exists() else ""
                return f"http://{text}" if text else None

            admin_url = wait_for(admin, what="envoy admin", process=envoy, log=log)

            def ready() -> bool | None:
                try:
                    return http.get(f"{admin_url}/ready").status_code == 200 or None
                except httpx.TransportError:
                    return None

            wait_for(ready, what="envoy /ready", process=envoy, log=log)
            listeners = http.get(f"{admin_url}/listeners", params={"format": "json"}).json()
            port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
            target = f"127.0.0.1:{port['port_value']}"
            yield Gateway(f"http://{target}", target, workdir / "access.log")


def get_without_variables(descriptor_set: Path) -> tuple[str, str]:
    """A GET route of the real contracts that needs no path variables, and its RPC path."""
    for file in load_descriptor_set(descriptor_set).file:
        if not file.package.startswith("podmesh."):
            continue
        for service in file.service:
            for method in service.method:
                options: descriptor_pb2.MethodOptions = method.options
                rule = options.Extensions[annotations_pb2.http]
                if rule.get and "{" not in rule.get:
                    return rule.get, f"/{file.package}.{service.name}/{method.name}"
    raise AssertionError("no GET route without variables in the contracts")


async def test_grpcurl_lists_the_whole_api_through_envoy(
    gateway: Gateway, services: list[Service]
) -> None:
    listed = (await grpcurl(gateway.grpc_target, "list")).split()
    assert "podmesh.tenant.v1.TenantService" in listed
    assert set(listed) >= {service.full_name for service in services}


async def test_health_through_envoy(gateway: Gateway) -> None:
    reply = json.loads(await grpcurl(gateway.grpc_target, "grpc.health.v1.Health/Check"))
    assert reply == {"status": "SERVING"}


def test_unknown_json_path_is_404(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.url}/api/v1/nope", timeout=5)
    assert response.status_code == 404


def test_cors_preflight_is_answered(gateway: Gateway) -> None:
    response = httpx.options(
        f"{gateway.url}/api/v1/tenants",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=5,
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"]


def test_json_call_is_transcoded_to_its_backend(gateway: Gateway, descriptor_set: Path) -> None:
    rest_path, grpc_path = get_without_variables(descriptor_set)
    request_id = "test-json-call-is-transcoded"
    response = httpx.get(
        f"{gateway.url}{rest_path}",
        headers={"Origin": ORIGIN, "x-request-id": request_id},
        timeout=5,
    )
    # The upstream here is the reflection server, which does not implement the RPC:
    # the gRPC status comes back as JSON with its HTTP equivalent.
    assert response.status_code == 501
    assert response.json()["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert response.headers["x-request-id"] == request_id
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "grpc-status" in response.headers["access-control-expose-headers"]

    def logged() -> dict[str, Any] | None:
        lines = gateway.access_log.read_text().splitlines() if gateway.access_log.exists() else []
        entries = [json.loads(line) for line in lines]
        return next((e for e in entries if e["request_id"] == request_id), None)

    entry = wait_for(logged, what="the access log entry")
    assert entry["method"] == "GET"
    assert entry["path"] == rest_path
    assert entry["grpc_path"] == grpc_path
    assert entry["response_code"] == 501
    assert entry["upstream_cluster"] == grpc_path.split(".")[1]
    assert isinstance(entry["duration_ms"], int)
