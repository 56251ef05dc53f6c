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

from gateway import prefix_redirect, strict_json

MIB = 1024 * 1024
DEFAULT_MAX_REQUEST_BODY_BYTES = 4 * MIB
DEFAULT_MAX_RESPONSE_BODY_BYTES = 16 * MIB
DEFAULT_MAX_DOWNSTREAM_CONNECTIONS = 10_000
DEFAULT_UNARY_TIMEOUT_S = 30
DEFAULT_STREAM_IDLE_TIMEOUT_S = 300
# Unary gRPC requests are buffered and capped at the edge; above what any unary RPC takes
# (a 5 MiB feed body, a 4 MiB ingestion batch), below the services' 16 MiB.
DEFAULT_MAX_GRPC_UNARY_REQUEST_BYTES = 8 * MIB
# Room for a 20 KB URL, far under the services' gRPC metadata limit (GRPC_MAX_METADATA_BYTES
# in services/shared/server.py), so an oversized request is the gateway's clean 431 and
# never the upstream's RESOURCE_EXHAUSTED naming its headers.
DEFAULT_MAX_REQUEST_HEADERS_KB = 32
DEFAULT_LISTEN_HOST = "127.0.0.1"
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
# REST paths any web page may call, without credentials: the tracking pixel's. Which
# origins may send a pixel's events is each pixel's own setting, which Envoy cannot
# know, so the attribution service checks every call's Origin against the pixel
# (REJECTION_REASON_ORIGIN_NOT_ALLOWED). Browsers send no credential here: no
# cookies are allowed, nor an Authorization header from a page.
PUBLIC_CORS_PATHS = ("/api/v1/siteEvents:track",)
PUBLIC_CORS_ALLOW_HEADERS = ("content-type", "x-request-id")

ORIGINAL_METHOD_HEADER = "x-podmesh-original-method"
ORIGINAL_PATH_HEADER = "x-podmesh-original-path"
ORIGINAL_CONTENT_TYPE_HEADER = "x-podmesh-original-content-type"
# What the access log keeps of a REST path; the whole URL (a 20 KB page token) would also
# travel to the services in this header.
ORIGINAL_PATH_MAX_CHARS = 1024
# The transcoder copies the whole REST URL into it; the services never read it, and its
# size alone can exceed their gRPC metadata limit.
UPSTREAM_HEADERS_TO_REMOVE = ("x-envoy-original-path",)

# The platform administrator's token: the access log service is not a tenant's to call.
PREFIX_LOG_CREDENTIAL_ENV = "PODMESH_ADMIN_TOKEN"

RETRY_ON = "unavailable,reset,connect-failure"
RETRY_ATTEMPTS = 2
# How often a retry may pick a host again to avoid the one that just failed. Least
# request prefers a replica that just died (its requests fail at once, so it has none
# in flight): with 2 replicas each pick lands on it about 3 times in 4, and with the
# former 3 picks about 4 retries in 10 went back to it until it was ejected.
HOST_RESELECTIONS = 10

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
    cors_allowed_origins: Sequence[str] = (),
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES,
    max_grpc_unary_request_bytes: int = DEFAULT_MAX_GRPC_UNARY_REQUEST_BYTES,
    max_request_headers_kb: int = DEFAULT_MAX_REQUEST_HEADERS_KB,
    max_response_body_bytes: int = DEFAULT_MAX_RESPONSE_BODY_BYTES,
    max_downstream_connections: int = DEFAULT_MAX_DOWNSTREAM_CONNECTIONS,
    unary_timeout_s: int = DEFAULT_UNARY_TIMEOUT_S,
    stream_idle_timeout_s: int = DEFAULT_STREAM_IDLE_TIMEOUT_S,
    strict_json_bodies: bool = True,
    trusted_proxy_hops: int = 0,
    prefix_log_cluster: str | None = None,
    prefix_log_credential: str | None = None,
    redirect_floor_path: str | None = None,
) -> dict[str, Any]:
    """A complete Envoy v3 bootstrap for the gateway.

    `upstreams` maps a backend (the <name> of package podmesh.<name>.vN) to its
    replicas. Every backend that has a service in the descriptor set must be given;
    extra backends still get a cluster, so a stack can be wired before its contract
    lands. `cors_allowed_origins` are exact origins (see `parse_cors_origins`); none by
    default, so no browser page may call the API with its user's credentials.
    `trusted_proxy_hops` is how many proxies (load balancers, CDNs) stand in front of
    the gateway, each appending to X-Forwarded-For; none by default, so the client
    address is the connection's peer whatever X-Forwarded-For a client writes.
    `prefix_log_cluster` receives the measurement prefix's access log (see
    gateway.prefix_redirect), sent with `prefix_log_credential`. `redirect_floor_path`
    adds a route answering a fixed 302 by `direct_response`, the floor the prefix
    benchmark (tests/bench/prefix.py) measures the prefix route against, and leaves the
    prefix requests under `prefix_redirect.UNLOGGED_BENCH_PREFIX` out of the access log,
    so that the benchmark can tell the Lua filter's cost from the log's.
    """
    for origin in cors_allowed_origins:
        parse_cors_origin(origin)
    if trusted_proxy_hops < 0:
        raise ValueError(f"trusted proxy hops must be 0 or more, not {trusted_proxy_hops}")
    if prefix_log_cluster is not None and prefix_log_cluster not in upstreams:
        raise ValueError(f"no upstream endpoints for the prefix log's {prefix_log_cluster}")
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
        # Stated, not defaulted: the client address the access logs carry is the one
        # this many hops from the right of X-Forwarded-For, the peer itself with 0.
        "xff_num_trusted_hops": trusted_proxy_hops,
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
        "max_request_headers_kb": max_request_headers_kb,
        "local_reply_config": _local_reply_config(max_request_body_bytes, max_request_headers_kb),
        "early_header_mutation_extensions": [_remember_method()],
        "access_log": [
            _access_log(access_log_path or "/dev/stdout"),
            *(
                [
                    prefix_redirect.grpc_access_log(
                        prefix_log_cluster,
                        prefix_log_credential,
                        unlogged_bench_prefix=redirect_floor_path is not None,
                    )
                ]
                if prefix_log_cluster is not None
                else []
            ),
        ],
        "route_config": {
            "name": "podmesh",
            "request_headers_to_remove": list(UPSTREAM_HEADERS_TO_REMOVE),
            "virtual_hosts": [
                {
                    "name": "podmesh",
                    "domains": ["*"],
                    "routes": _routes(
                        services,
                        timeouts,
                        max_request_body_bytes,
                        max_grpc_unary_request_bytes,
                        rest_filters=strict_json.route_config() if strict_json_bodies else {},
                        redirect_floor_path=redirect_floor_path,
                    ),
                    "typed_per_filter_config": {
                        "envoy.filters.http.cors": _cors_policy(cors_allowed_origins),
                    },
                }
            ],
        },
        "http_filters": [
            # First: a prefix request is answered before any API filter sees it.
            prefix_redirect.http_filter(),
            {
                "name": "envoy.filters.http.cors",
                "typed_config": {"@type": _TYPE + "extensions.filters.http.cors.v3.Cors"},
            },
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {"@type": _TYPE + "extensions.filters.http.grpc_web.v3.GrpcWeb"},
            },
            # Off by default and switched on per route (see _routes): on the REST route,
            # since the transcoder does not enforce its own body limit on unary JSON calls,
            # and on unary gRPC methods; streams are never buffered.
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
    max_grpc_unary_request_bytes: int,
    *,
    rest_filters: Mapping[str, Any],
    redirect_floor_path: str | None = None,
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
        "host_selection_retry_max_attempts": HOST_RESELECTIONS,
    }
    routes: list[dict[str, Any]] = [prefix_redirect.route()]
    if redirect_floor_path is not None:
        routes.insert(0, prefix_redirect.floor_route(redirect_floor_path))
    for service in services:
        for method in service.methods:
            action: dict[str, Any] = {"cluster": service.backend}
            if method.streaming:
                action |= streaming_route
            else:
                action["timeout"] = timeouts.unary
                if method.idempotent:
                    action["retry_policy"] = retry_policy
            route: dict[str, Any] = {
                "name": service.path(method),
                "match": {"path": service.path(method)},
                "route": action,
            }
            # Streams are never buffered: their messages are the services' to bound.
            if not method.streaming:
                route["typed_per_filter_config"] = _buffer_up_to(max_grpc_unary_request_bytes)
            routes.append(route)
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
    for path in PUBLIC_CORS_PATHS:
        routes.append(
            {
                "name": f"rest {path}",
                "match": {"path": path},
                "route": {"cluster": REFLECTION_CLUSTER, "timeout": timeouts.unary},
                "typed_per_filter_config": {
                    **_buffer_up_to(max_request_body_bytes),
                    **rest_filters,
                    "envoy.filters.http.cors": _public_cors_policy(),
                },
            }
        )
    routes.append(
        {
            "name": "rest",
            "match": {"prefix": "/"},
            "route": {"cluster": REFLECTION_CLUSTER, "timeout": timeouts.unary},
            "typed_per_filter_config": {
                **_buffer_up_to(max_request_body_bytes),
                **rest_filters,
            },
        }
    )
    return routes


def _buffer_up_to(max_request_bytes: int) -> dict[str, Any]:
    """Switches the buffer filter on for a route: a larger request body is answered 413."""
    return {
        BUFFER_FILTER: {
            "@type": _TYPE + "config.route.v3.FilterConfig",
            "config": {
                "@type": _TYPE + "extensions.filters.http.buffer.v3.BufferPerRoute",
                "buffer": {"max_request_bytes": max_request_bytes},
            },
        }
    }


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


def _public_cors_policy() -> dict[str, Any]:
    return {
        "@type": _TYPE + "extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"safe_regex": {"regex": ".*"}}],
        "allow_methods": "POST, OPTIONS",
        "allow_headers": ", ".join(PUBLIC_CORS_ALLOW_HEADERS),
        "expose_headers": ", ".join(CORS_EXPOSE_HEADERS),
        "allow_credentials": False,
        "max_age": "86400",
    }


_ORIGIN = re.compile(
    r"^https?://(?:[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$"
)


def parse_cors_origin(origin: str) -> str:
    """An origin as browsers send it (`https://app.example.com:8443`), else ValueError.

    No wildcards, paths or upper case: Envoy compares exactly, and a pattern that let a
    stranger's page in would let it call the API with its visitor's credentials.
    """
    if not _ORIGIN.match(origin):
        raise ValueError(
            f"CORS origin {origin!r} is not an exact origin such as https://app.example.com "
            "(scheme, lower-case host, optional port; no path, no wildcard)"
        )
    return origin


def parse_cors_origins(text: str) -> tuple[str, ...]:
    """The comma-separated origins of PODMESH_CORS_ALLOWED_ORIGINS; empty means none."""
    return tuple(parse_cors_origin(part.strip()) for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class LocalError:
    """How a JSON client sees an HTTP status Envoy answers itself."""

    http_status: int
    grpc_code: int
    reason: str
    # Else Envoy's own text, which says what was wrong with the request.
    message: str | None = None


# gRPC code numbers, as google.rpc.Status carries them.
_INVALID_ARGUMENT, _DEADLINE_EXCEEDED, _NOT_FOUND = 3, 4, 5
_RESOURCE_EXHAUSTED, _UNKNOWN, _UNAVAILABLE = 8, 2, 14


def local_errors(max_request_body_bytes: int, max_request_headers_kb: int) -> list[LocalError]:
    return [
        # Malformed JSON, an unknown enum value or field, a bad timestamp, an unknown
        # query parameter: the transcoder's text names the field.
        LocalError(400, _INVALID_ARGUMENT, "INVALID_REQUEST"),
        LocalError(404, _NOT_FOUND, "METHOD_NOT_FOUND"),
        LocalError(408, _DEADLINE_EXCEEDED, "REQUEST_TIMEOUT"),
        LocalError(
            413,
            _RESOURCE_EXHAUSTED,
            "REQUEST_TOO_LARGE",
            f"the request body is larger than {max_request_body_bytes} bytes",
        ),
        LocalError(429, _RESOURCE_EXHAUSTED, "RATE_LIMITED"),
        LocalError(
            431,
            _RESOURCE_EXHAUSTED,
            "REQUEST_HEADERS_TOO_LARGE",
            f"the request line and headers are larger than {max_request_headers_kb} KiB",
        ),
        # Envoy's text for these names upstream hosts and socket errors.
        LocalError(502, _UNAVAILABLE, "SERVICE_UNAVAILABLE", "the service failed; retry later"),
        LocalError(
            503, _UNAVAILABLE, "SERVICE_UNAVAILABLE", "the service is unavailable; retry later"
        ),
        LocalError(
            504, _DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "the service did not answer in time"
        ),
    ]


def _local_reply_config(max_request_body_bytes: int, max_request_headers_kb: int) -> dict[str, Any]:
    """Errors Envoy answers itself, as the services' google.rpc.Status JSON for JSON clients.

    gRPC and gRPC-Web clients keep Envoy's gRPC status: a JSON body would only end up in
    their grpc-message. They are told apart by the content type the client sent, which
    the early header mutation kept (see _remember_path_and_content_type).
    """
    grpc_client = {
        "header_filter": {
            "header": {
                "name": ORIGINAL_CONTENT_TYPE_HEADER,
                "string_match": {"prefix": "application/grpc"},
            }
        }
    }
    json_client = {
        "header_filter": {
            "header": {
                "name": ORIGINAL_CONTENT_TYPE_HEADER,
                "string_match": {"prefix": "application/grpc"},
                "invert_match": True,
                # A JSON client need not send a content type (a GET has no body).
                "treat_missing_header_as_empty": True,
            }
        }
    }

    # A filter that answers with its own JSON body (a google.rpc.Status already) keeps it.
    not_json_yet = {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": _TYPE + "extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": "!('content-type' in response.headers"
                " && response.headers['content-type'].startsWith('application/json'))",
            },
        }
    }

    def status_is(op: str, status: int) -> dict[str, Any]:
        return {
            "status_code_filter": {
                "comparison": {
                    "op": op,
                    "value": {
                        "default_value": status,
                        "runtime_key": f"podmesh.local_reply.{status}",
                    },
                }
            }
        }

    def both(*filters: dict[str, Any]) -> dict[str, Any]:
        return {"and_filter": {"filters": list(filters)}}

    def json_status(error: LocalError | None) -> dict[str, Any]:
        code = error.grpc_code if error else _UNKNOWN
        reason = error.reason if error else "GATEWAY_ERROR"
        message = (error.message if error else None) or "%LOCAL_REPLY_BODY%"
        return {
            "json_format": {
                "code": code,
                "message": message,
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": reason,
                        "domain": "podmesh.dev",
                    }
                ],
            }
        }

    mappers: list[dict[str, Any]] = [
        # The buffer filter's 413 would reach gRPC clients as UNKNOWN; a message over the
        # limit is RESOURCE_EXHAUSTED, as the services themselves answer it.
        {
            "filter": both(grpc_client, status_is("EQ", 413)),
            "headers_to_add": [
                {
                    "header": {"key": "grpc-status", "value": str(_RESOURCE_EXHAUSTED)},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
        },
    ]
    for error in local_errors(max_request_body_bytes, max_request_headers_kb):
        mappers.append(
            {
                "filter": both(json_client, not_json_yet, status_is("EQ", error.http_status)),
                "body_format_override": json_status(error),
            }
        )
    # Anything else Envoy may answer (405, 426, 500, ...) keeps its status, still as JSON.
    mappers.append(
        {
            "filter": both(json_client, not_json_yet, status_is("GE", 400)),
            "body_format_override": json_status(None),
        }
    )
    return {"mappers": mappers}


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
        "health_checks": [_health_check()],
        "outlier_detection": _outlier_detection(),
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


# A dead endpoint is marked unhealthy within HEALTH_INTERVAL_S * UNHEALTHY_THRESHOLD
# + HEALTH_TIMEOUT_S (1.5 s; a refused connection fails at once, a hung one at the
# timeout), and traffic ejects it sooner (outlier detection, on consecutive failures).
HEALTH_INTERVAL_S = 0.5
HEALTH_TIMEOUT_S = 0.5
UNHEALTHY_THRESHOLD = 2


def _health_check() -> dict[str, Any]:
    return {
        "timeout": f"{HEALTH_TIMEOUT_S}s",
        "interval": f"{HEALTH_INTERVAL_S}s",
        "interval_jitter": "0.1s",
        # An idle gateway would otherwise check only once a minute.
        "no_traffic_interval": f"{HEALTH_INTERVAL_S}s",
        "unhealthy_threshold": UNHEALTHY_THRESHOLD,
        "healthy_threshold": 2,
        # The empty service name is the whole server's health (NOT_SERVING without
        # PostgreSQL, see services/shared/dependencies.py).
        "grpc_health_check": {},
    }


def _outlier_detection() -> dict[str, Any]:
    return {
        "consecutive_5xx": 5,
        # Ejects at the third refused connection or reset in a row, without waiting
        # for a health check round.
        "consecutive_gateway_failure": 3,
        # Envoy enforces gateway-failure ejection 0% of the time unless told.
        "enforcing_consecutive_gateway_failure": 100,
        "interval": "2s",
        # A restarted replica is back in rotation within seconds, once it answers.
        "base_ejection_time": "5s",
        "max_ejection_percent": 50,
    }


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
                },
                *_remember_path_and_content_type(),
            ],
        },
    }


def _remember_path_and_content_type() -> list[dict[str, Any]]:
    # The REST path for the access log, which cannot read x-envoy-original-path once it
    # is removed for the upstream. The content type for local replies: grpc_web and the
    # transcoder rewrite it to application/grpc before Envoy answers a JSON client itself.
    # Sent by a client under these names, they are overwritten; a client that sends no
    # content type and forges this one only gets its own errors as plain text.
    return [
        {
            "append": {
                "header": {"key": key, "value": value},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        }
        for key, value in (
            (ORIGINAL_PATH_HEADER, f"%REQ(:PATH):{ORIGINAL_PATH_MAX_CHARS}%"),
            (ORIGINAL_CONTENT_TYPE_HEADER, "%REQ(CONTENT-TYPE):64%"),
        )
    ]


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
                    "path": f"%REQ({ORIGINAL_PATH_HEADER})%",
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
    parser.add_argument(
        "--listen-host",
        default=DEFAULT_LISTEN_HOST,
        help=f"address the gateway binds (default {DEFAULT_LISTEN_HOST}; 0.0.0.0 exposes it)",
    )
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
        help="allowed CORS origin (exact, e.g. https://app.example.com); repeat for more "
        "(default: none, so browsers get no CORS headers)",
    )
    parser.add_argument(
        "--strict-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"refuse JSON bodies with unknown fields (default: on; {strict_json.SETTING})",
    )
    parser.add_argument(
        "--trusted-proxy-hops",
        type=int,
        default=0,
        metavar="N",
        help="proxies in front of the gateway that append to X-Forwarded-For "
        "(default 0: the connection's peer is the client)",
    )
    parser.add_argument(
        "--prefix-log-cluster",
        default=None,
        metavar="BACKEND",
        help="backend receiving the measurement prefix's gRPC access log (e.g. analytics); "
        f"Envoy authenticates with ${PREFIX_LOG_CREDENTIAL_ENV}",
    )
    parser.add_argument(
        "--redirect-floor-path",
        default=None,
        metavar="PATH",
        help="also answer PATH with a fixed 302 by direct_response (for benchmarks)",
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
            cors_allowed_origins=tuple(args.cors_origin or ()),
            strict_json_bodies=(
                strict_json.enabled_by(os.environ) if args.strict_json is None else args.strict_json
            ),
            trusted_proxy_hops=args.trusted_proxy_hops,
            prefix_log_cluster=args.prefix_log_cluster,
            prefix_log_credential=os.environ.get(PREFIX_LOG_CREDENTIAL_ENV) or None,
            redirect_floor_path=args.redirect_floor_path,
        )
    except (OSError, ValueError) as error:
        parser.error(str(error))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(config, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
