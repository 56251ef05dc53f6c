"""Render the Envoy gateway's bootstrap from the contracts' descriptor set.

Services, streaming shapes and HTTP verbs are read from the descriptor set so that a
new contract reaches the gateway by regenerating it, with no edit here.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from gateway import strict_json

MIB = 1024 * 1024
DEFAULT_MAX_REQUEST_BODY_BYTES = 4 * MIB
DEFAULT_MAX_RESPONSE_BODY_BYTES = 16 * MIB
DEFAULT_MAX_DOWNSTREAM_CONNECTIONS = 10_000
DEFAULT_UNARY_TIMEOUT_S = 30
DEFAULT_STREAM_IDLE_TIMEOUT_S = 300
# Only a backstop: streaming routes override it with their own idle_timeout, and
# unary routes end at their timeout first.
HCM_STREAM_IDLE_TIMEOUT_S = 3600

# The hyphen keeps it apart from every backend name a package (podmesh.<name>.vN) yields.
REFLECTION_CLUSTER = "gateway-reflection"

CORS_ALLOW_METHODS = ("GET", "POST", "PATCH", "DELETE", "OPTIONS")
CORS_ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "x-request-id",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
)
# grpc-status-details-bin carries the AIP-193 ErrorInfo/BadRequest details to grpc-web.
CORS_EXPOSE_HEADERS = ("grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id")

ORIGINAL_METHOD_HEADER = "x-podmesh-original-method"

RETRY_ON = "unavailable,reset,connect-failure"
RETRY_ATTEMPTS = 2

_PACKAGE = re.compile(r"^podmesh\.(?P<backend>[a-z][a-z0-9_]*)\.v[0-9]+$")
_TYPE = "type.googleapis.com/envoy."


@dataclass(frozen=True)
class Method:
    name: str
    streaming: bool
    # Only GET-mapped RPCs are safe to replay: the contracts map every write to
    # POST, PATCH or DELETE.
    idempotent: bool


@dataclass(frozen=True)
class Service:
    full_name: str
    package: str
    backend: str
    methods: tuple[Method, ...]

    def path(self, method: Method) -> str:
        return f"/{self.full_name}/{method.name}"


def load_descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def podmesh_services(descriptor_set: descriptor_pb2.FileDescriptorSet) -> list[Service]:
    """Every service in a podmesh.<backend>.vN package, in a stable order."""
    services = []
    for file in descriptor_set.file:
        match = _PACKAGE.match(file.package)
        if match is None:
            continue
        for service in file.service:
            methods = tuple(
                Method(
                    name=method.name,
                    streaming=method.client_streaming or method.server_streaming,
                    idempotent=_is_get_only(method.options),
                )
                for method in service.method
            )
            services.append(
                Service(
                    full_name=f"{file.package}.{service.name}",
                    package=file.package,
                    backend=match["backend"],
                    methods=methods,
                )
            )
    return sorted(services, key=lambda service: service.full_name)


def _is_get_only(options: descriptor_pb2.MethodOptions) -> bool:
    if not options.HasExtension(annotations_pb2.http):
        return False
    rule = options.Extensions[annotations_pb2.http]
    bindings = [rule, *rule.additional_bindings]
    return all(binding.WhichOneof("pattern") == "get" for binding in bindings)


def render_envoy_config(
    descriptor_set: Path,
    *,
    listen_host: str,
    listen_port: int,
    admin_port: int,
    upstreams: Mapping[str, Sequence[tuple[str, int]]],
    reflection_upstream: tuple[str, int],
    access_log_path: str | None = None,
    cors_allowed_origins: Sequence[str] = ("*",),
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
    max_response_body_bytes: int = DEFAULT_MAX_RESPONSE_BODY_BYTES,
    max_downstream_connections: int = DEFAULT_MAX_DOWNSTREAM_CONNECTIONS,
    unary_timeout_s: int = DEFAULT_UNARY_TIMEOUT_S,
    stream_idle_timeout_s: int = DEFAULT_STREAM_IDLE_TIMEOUT_S,
    strict_json_bodies: bool = True,
) -> dict[str, Any]:
    """A complete Envoy v3 bootstrap for the gateway.

    `upstreams` maps a backend (the <name> of package podmesh.<name>.vN) to its
    replicas. Every backend that has a service in the descriptor set must be given;
    extra backends still get a cluster, so a stack can be wired before its contract
    lands.
    """
    descriptors = load_descriptor_set(descriptor_set)
    services = podmesh_services(descriptors)
    missing = sorted({service.backend for service in services} - set(upstreams))
    if missing:
        raise ValueError(f"no upstream endpoints for backend(s): {', '.join(missing)}")
    empty = sorted(name for name, endpoints in upstreams.items() if not endpoints)
    if empty:
        raise ValueError(f"backend(s) with an empty endpoint list: {', '.join(empty)}")

    timeouts = _Timeouts(unary=f"{unary_timeout_s}s", stream_idle=f"{stream_idle_timeout_s}s")
    connection_manager = {
        "@type": _TYPE
        + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "codec_type": "AUTO",
        # The gateway is the edge: append the client to x-forwarded-for for the services.
        "use_remote_address": True,
        "generate_request_id": True,
        # Clients that send x-request-id keep it, so their logs join ours.
        "preserve_external_request_id": True,
        "always_set_request_id_in_response": True,
        # By default Envoy rewrites a nibble of UUID-shaped request ids to carry trace
        # sampling state, so a client's id would no longer match our logs and audit.
        "request_id_extension": {
            "typed_config": {
                "@type": _TYPE + "extensions.request_id.uuid.v3.UuidRequestIdConfig",
                "pack_trace_reason": False,
            }
        },
        "stream_idle_timeout": f"{HCM_STREAM_IDLE_TIMEOUT_S}s",
        "request_headers_timeout": "10s",
        "early_header_mutation_extensions": [_remember_method()],
        "access_log": [_access_log(access_log_path or "/dev/stdout")],
        "route_config": {
            "name": "podmesh",
            "virtual_hosts": [
                {
                    "name": "podmesh",
                    "domains": ["*"],
                    "routes": _routes(
                        services,
                        timeouts,
                        max_request_body_bytes,
                        rest_filters=strict_json.route_config() if strict_json_bodies else {},
                    ),
                    "typed_per_filter_config": {
                        "envoy.filters.http.cors": _cors_policy(cors_allowed_origins),
                    },
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.cors",
                "typed_config": {"@type": _TYPE + "extensions.filters.http.cors.v3.Cors"},
            },
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {"@type": _TYPE + "extensions.filters.http.grpc_web.v3.GrpcWeb"},
            },
            # Off by default and switched on only for the REST route (see _routes): the
            # transcoder does not enforce its own body limit on unary JSON calls, and the
            # buffer filter answers 413 there, while gRPC streams are never buffered.
            {
                "name": BUFFER_FILTER,
                "disabled": True,
                "typed_config": {
                    "@type": _TYPE + "extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": max_request_body_bytes,
                },
            },
            # After the buffer filter, which bounds the body it reads.
            *(
                [strict_json.http_filter(descriptors, [s.full_name for s in services])]
                if strict_json_bodies
                else []
            ),
            {
                "name": "envoy.filters.http.grpc_json_transcoder",
                "typed_config": _transcoder(
                    descriptor_set,
                    services,
                    max_request_body_bytes=max_request_body_bytes,
                    max_response_body_bytes=max_response_body_bytes,
                ),
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE + "extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    clusters = [_cluster(name, endpoints) for name, endpoints in sorted(upstreams.items())]
    clusters.append(_cluster(REFLECTION_CLUSTER, [reflection_upstream]))
    return {
        "node": {"id": "podmesh-gateway", "cluster": "podmesh-gateway"},
        "admin": {"address": _socket_address("127.0.0.1", admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "podmesh",
                    "address": _socket_address(listen_host, listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": connection_manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _TYPE + "extensions.resource_monitors.downstream_connections"
                        ".v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": max_downstream_connections,
                    },
                }
            ]
        },
    }


@dataclass(frozen=True)
class _Timeouts:
    unary: str
    stream_idle: str


BUFFER_FILTER = "envoy.filters.http.buffer"


def _routes(
    services: Sequence[Service],
    timeouts: _Timeouts,
    max_request_body_bytes: int,
    *,
    rest_filters: Mapping[str, Any],
) -> list[dict[str, Any]]:
    streaming_route = {"timeout": "0s", "idle_timeout": timeouts.stream_idle}
    retry_policy = {
        "retry_on": RETRY_ON,
        "num_retries": RETRY_ATTEMPTS,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": _TYPE
                    + "extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
    }
    routes: list[dict[str, Any]] = []
    for service in services:
        for method in service.methods:
            action: dict[str, Any] = {"cluster": service.backend}
            if method.streaming:
                action |= streaming_route
            else:
                action["timeout"] = timeouts.unary
                if method.idempotent:
                    action["retry_policy"] = retry_policy
            routes.append(
                {
                    "name": service.path(method),
                    "match": {"path": service.path(method)},
                    "route": action,
                }
            )
    # Methods newer than this descriptor set still reach their backend, as unary.
    for package, backend in sorted({(s.package, s.backend) for s in services}):
        routes.append(
            {
                "name": package,
                "match": {"prefix": f"/{package}."},
                "route": {"cluster": backend, "timeout": timeouts.unary},
            }
        )
    # Reflection and health Watch are streams.
    for prefix in ("/grpc.reflection.", "/grpc.health.v1.Health/"):
        routes.append(
            {
                "name": prefix.strip("/."),
                "match": {"prefix": prefix},
                "route": {"cluster": REFLECTION_CLUSTER} | streaming_route,
            }
        )
    routes.append(
        {
            "name": "grpc_not_found",
            "match": {"prefix": "/", "grpc": {}},
            "direct_response": {"status": 404},
        }
    )
    # REST paths match here, before the transcoder rewrites them to gRPC paths, and the
    # cors filter ignores routes without a route entry (a direct_response has none):
    # this route is what lets it answer preflights and decorate JSON responses. The
    # transcoder answers unmapped REST paths with 404 (reject_unknown_method), so only
    # grpc-web calls to unknown services (matched before grpc_web rewrites their
    # content type) get through, and the reflection server answers UNIMPLEMENTED.
    routes.append(
        {
            "name": "rest",
            "match": {"prefix": "/"},
            "route": {"cluster": REFLECTION_CLUSTER, "timeout": timeouts.unary},
            "typed_per_filter_config": {
                BUFFER_FILTER: {
                    "@type": _TYPE + "config.route.v3.FilterConfig",
                    "config": {
                        "@type": _TYPE + "extensions.filters.http.buffer.v3.BufferPerRoute",
                        "buffer": {"max_request_bytes": max_request_body_bytes},
                    },
                },
                **rest_filters,
            },
        }
    )
    return routes


def _cors_policy(allowed_origins: Sequence[str]) -> dict[str, Any]:
    return {
        "@type": _TYPE + "extensions.filters.http.cors.v3.CorsPolicy",
        # Envoy treats an origin matcher that matches "*" as allowing every origin.
        "allow_origin_string_match": [{"exact": origin} for origin in allowed_origins],
        "allow_methods": ", ".join(CORS_ALLOW_METHODS),
        "allow_headers": ", ".join(CORS_ALLOW_HEADERS),
        "expose_headers": ", ".join(CORS_EXPOSE_HEADERS),
        "max_age": "86400",
    }


def _transcoder(
    descriptor_set: Path,
    services: Sequence[Service],
    *,
    max_request_body_bytes: int,
    max_response_body_bytes: int,
) -> dict[str, Any]:
    return {
        "@type": _TYPE + "extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        # Absolute, so the config does not depend on Envoy's working directory.
        "proto_descriptor": str(descriptor_set.resolve()),
        "services": [service.full_name for service in services],
        "auto_mapping": False,
        "convert_grpc_status": True,
        # Else a mistyped path becomes an upstream 503 that outlier detection counts.
        "request_validation_options": {
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
        },
        "max_request_body_size": max_request_body_bytes,
        "max_response_body_size": max_response_body_bytes,
        "print_options": {
            "add_whitespace": False,
            "always_print_primitive_fields": True,
            "always_print_enums_as_ints": False,
            "preserve_proto_field_names": False,
        },
    }


def _cluster(name: str, endpoints: Sequence[tuple[str, int]]) -> dict[str, Any]:
    static = all(_is_ip(host) for host, _ in endpoints)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": "1s",
        # Request cost varies a lot between RPCs; least-request beats round robin.
        "lb_policy": "LEAST_REQUEST",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "extensions.upstreams.http.v3.HttpProtocolOptions",
                # No connection_keepalive: grpc servers answer pings more often than every
                # 5 minutes with GOAWAY too_many_pings.
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": _socket_address(host, port)}}
                        for host, port in endpoints
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "2s",
                # An idle gateway would otherwise check only once a minute.
                "no_traffic_interval": "2s",
                "unhealthy_threshold": 3,
                "healthy_threshold": 2,
                # The empty service name is the whole server's health.
                "grpc_health_check": {},
            }
        ],
        "outlier_detection": {
            "consecutive_5xx": 5,
            "consecutive_gateway_failure": 3,
            # Envoy enforces gateway-failure ejection 0% of the time unless told.
            "enforcing_consecutive_gateway_failure": 100,
            "interval": "5s",
            "base_ejection_time": "15s",
            "max_ejection_percent": 50,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 1024,
                    "max_pending_requests": 1024,
                    # Over HTTP/2 this bounds concurrent streams, ingestion streams included.
                    "max_requests": 4096,
                    "max_retries": 16,
                    "track_remaining": True,
                }
            ]
        },
    }
    if not static:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return cluster


def _remember_method() -> dict[str, Any]:
    # The transcoder turns every JSON call into a POST; the access log wants the verb
    # the client sent. Overwritten, so a client cannot forge it.
    return {
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": _TYPE + "extensions.http.early_header_mutation.header_mutation.v3"
            ".HeaderMutation",
            "mutations": [
                {
                    "append": {
                        "header": {"key": ORIGINAL_METHOD_HEADER, "value": "%REQ(:METHOD)%"},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                }
            ],
        },
    }


def _access_log(path: str) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": _TYPE + "extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": {
                "json_format": {
                    "start_time": "%START_TIME%",
                    "method": f"%REQ({ORIGINAL_METHOD_HEADER}?:METHOD)%",
                    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                    "grpc_path": "%REQ(:PATH)%",
                    "protocol": "%PROTOCOL%",
                    "response_code": "%RESPONSE_CODE%",
                    "grpc_status": "%GRPC_STATUS%",
                    "response_flags": "%RESPONSE_FLAGS%",
                    "duration_ms": "%DURATION%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    "upstream_cluster": "%UPSTREAM_CLUSTER%",
                    "upstream_host": "%UPSTREAM_HOST%",
                    "bytes_received": "%BYTES_RECEIVED%",
                    "bytes_sent": "%BYTES_SENT%",
                    "user_agent": "%REQ(USER-AGENT)%",
                    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                }
            },
        },
    }


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_endpoint(text: str) -> tuple[str, int]:
    """`host:port`, with IPv6 hosts in brackets (`[::1]:50051`)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def parse_upstream(text: str) -> tuple[str, tuple[str, int]]:
    name, sep, endpoint = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=HOST:PORT, got {text!r}")
    return name, parse_endpoint(endpoint)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.envoy_config",
        description="Render the Envoy gateway bootstrap from the descriptor set.",
    )
    parser.add_argument("--descriptor-set", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="bootstrap file to write (JSON)")
    parser.add_argument("--listen-host", default="0.0.0.0")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--admin-port", type=int, required=True, help="bound to 127.0.0.1")
    parser.add_argument(
        "--upstream",
        type=parse_upstream,
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="a replica of backend NAME (podmesh.NAME.v1); repeat for more replicas",
    )
    parser.add_argument("--reflection", type=parse_endpoint, required=True, metavar="HOST:PORT")
    parser.add_argument("--access-log", default=None, help="default /dev/stdout")
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="allowed CORS origin; repeat for more (default: any)",
    )
    parser.add_argument(
        "--strict-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"refuse JSON bodies with unknown fields (default: on; {strict_json.SETTING})",
    )
    args = parser.parse_args(argv)

    upstreams: dict[str, list[tuple[str, int]]] = {}
    for name, endpoint in args.upstream:
        upstreams.setdefault(name, []).append(endpoint)
    try:
        config = render_envoy_config(
            args.descriptor_set,
            listen_host=args.listen_host,
            listen_port=args.listen_port,
            admin_port=args.admin_port,
            upstreams=upstreams,
            reflection_upstream=args.reflection,
            access_log_path=args.access_log,
            cors_allowed_origins=tuple(args.cors_origin or ("*",)),
            strict_json_bodies=(
                strict_json.enabled_by(os.environ) if args.strict_json is None else args.strict_json
            ),
        )
    except (OSError, ValueError) as error:
        parser.error(str(error))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(config, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
