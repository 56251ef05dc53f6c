"""The measurement prefix route: `GET|HEAD /e/{prefix}/{url-without-scheme}` answered
302 by Envoy itself, and logged to analytics over Envoy's gRPC access log service.

Envoy's own redirect action cannot do it: `redirect` takes its host from configuration
(`host_redirect`) or the request, never from the path, and `regex_rewrite` only rewrites
the path; a `direct_response` cannot build a header from part of the path. A short Lua
script (`prefix_redirect.lua`) on this one route builds the Location, refuses what would
make it unsafe, and answers in-process with no upstream hop; it is off on every other
route. The 302 passes the local reply mappers untouched: they rewrite statuses >= 400.

The access log (`envoy.access_loggers.http_grpc`) is a client stream from Envoy to the
analytics service, buffered and flushed each second; it is best effort: entries in
Envoy's buffer when it dies, or sent while analytics is down past the buffer, are lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.shared.measurement_prefix import PATH_PREFIX

FILTER_NAME = "podmesh.prefix_redirect"
ROUTE_NAME = "measurement_prefix"
SOURCE_NAME = "prefix_redirect"
LOG_NAME = "podmesh-prefix"
LUA_SOURCE = Path(__file__).with_name("prefix_redirect.lua")
# Beyond what HTTPRequestProperties carries itself (method, path, user agent, referer,
# request id).
LOGGED_REQUEST_HEADERS = ("range",)
# Flushed at least this often; analytics counts a request within about this delay.
FLUSH_INTERVAL = "1s"
# What Envoy buffers before it sends (per worker). Envoy's default, 16 KiB, sends a
# message every ~40 requests: at thousands of redirects a second that is a hundred
# messages, each a transaction in analytics, taking the CPU the redirects need. With
# room for a flush interval's entries, messages go out about once a second each.
BUFFER_SIZE_BYTES = 4 * 1024 * 1024
# Benchmarks only (with the floor route): prefix ids under this are redirected by the
# same Lua filter but not logged, which separates the filter's cost from the log's.
UNLOGGED_BENCH_PREFIX = PATH_PREFIX + "bench-unlogged/"

_TYPE = "type.googleapis.com/envoy."
TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"


def http_filter() -> dict[str, Any]:
    """The Lua filter, off by default: `route()` switches it on for the prefix route."""
    return {
        "name": FILTER_NAME,
        "disabled": True,
        "typed_config": {
            "@type": _TYPE + "extensions.filters.http.lua.v3.Lua",
            "stat_prefix": "prefix_redirect",
            "source_codes": {SOURCE_NAME: {"inline_string": LUA_SOURCE.read_text()}},
        },
    }


def route() -> dict[str, Any]:
    return {
        "name": ROUTE_NAME,
        "match": {"prefix": PATH_PREFIX},
        # Never reached: the Lua filter answers every request on this route first.
        "direct_response": {"status": 400},
        "typed_per_filter_config": {
            FILTER_NAME: {
                "@type": _TYPE + "config.route.v3.FilterConfig",
                "config": {
                    "@type": _TYPE + "extensions.filters.http.lua.v3.LuaPerRoute",
                    "name": SOURCE_NAME,
                },
            }
        },
    }


def floor_route(path: str) -> dict[str, Any]:
    """A fixed 302 answered by Envoy's own direct_response, nothing logged to analytics:
    what a redirect costs the gateway at the least."""
    return {
        "name": "redirect_floor",
        "match": {"path": path},
        "direct_response": {"status": 302},
        # Else the transcoder, before the router, answers the unmapped path 404.
        "typed_per_filter_config": {
            TRANSCODER_FILTER: {"@type": _TYPE + "config.route.v3.FilterConfig", "disabled": True}
        },
        "response_headers_to_add": [
            {
                "header": {"key": "location", "value": "https://cdn.example.com/floor.mp3"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            },
            {
                "header": {"key": "cache-control", "value": "private, no-store"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            },
        ],
    }


def grpc_access_log(
    cluster: str, credential: str | None, *, unlogged_bench_prefix: bool = False
) -> dict[str, Any]:
    """Every request on the prefix route, streamed to `cluster`'s AccessLogService."""
    prefix_path: dict[str, Any] = {
        "header_filter": {"header": {"name": ":path", "string_match": {"prefix": PATH_PREFIX}}}
    }
    log_filter = prefix_path
    if unlogged_bench_prefix:
        unlogged = {"name": ":path", "string_match": {"prefix": UNLOGGED_BENCH_PREFIX}}
        log_filter = {
            "and_filter": {
                "filters": [
                    prefix_path,
                    {"header_filter": {"header": {**unlogged, "invert_match": True}}},
                ]
            }
        }
    grpc_service: dict[str, Any] = {"envoy_grpc": {"cluster_name": cluster}, "timeout": "5s"}
    if credential:
        grpc_service["initial_metadata"] = [
            {"key": "authorization", "value": f"Bearer {credential}"}
        ]
    return {
        "name": "envoy.access_loggers.http_grpc",
        "filter": log_filter,
        "typed_config": {
            "@type": _TYPE + "extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": LOG_NAME,
                "transport_api_version": "V3",
                "grpc_service": grpc_service,
                "buffer_flush_interval": FLUSH_INTERVAL,
                "buffer_size_bytes": BUFFER_SIZE_BYTES,
            },
            "additional_request_headers_to_log": list(LOGGED_REQUEST_HEADERS),
        },
    }
