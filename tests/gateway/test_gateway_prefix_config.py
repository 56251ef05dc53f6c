"""The rendered bootstrap's measurement prefix: its route, its Lua filter, its access
log to analytics and the client address it logs. Through a running Envoy, see
tests/integration/test_prefix_redirect.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import prefix_redirect
from tests.gateway.test_gateway_trust import connection_manager, descriptor_set, render

__all__ = ["descriptor_set"]
ENVOY = Path(sys.executable).parent / "envoy"


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    hosts = connection_manager(config)["route_config"]["virtual_hosts"]
    found: list[dict[str, Any]] = hosts[0]["routes"]
    return found


def test_the_prefix_route_comes_first_and_runs_the_lua_filter(descriptor_set: Path) -> None:
    config = render(descriptor_set)
    first = routes(config)[0]
    assert first["name"] == prefix_redirect.ROUTE_NAME
    assert first["match"] == {"prefix": "/e/"}
    assert prefix_redirect.FILTER_NAME in first["typed_per_filter_config"]
    filters = connection_manager(config)["http_filters"]
    assert filters[0]["name"] == prefix_redirect.FILTER_NAME
    # Off everywhere else: no API request runs the script.
    assert filters[0]["disabled"] is True
    assert all(
        prefix_redirect.FILTER_NAME not in route.get("typed_per_filter_config", {})
        for route in routes(config)[1:]
    )


def test_no_forwarded_for_is_trusted_unless_proxies_are_declared(descriptor_set: Path) -> None:
    assert connection_manager(render(descriptor_set))["xff_num_trusted_hops"] == 0
    hcm = connection_manager(render(descriptor_set, trusted_proxy_hops=2))
    assert (hcm["use_remote_address"], hcm["xff_num_trusted_hops"]) == (True, 2)
    with pytest.raises(ValueError, match="hops"):
        render(descriptor_set, trusted_proxy_hops=-1)


def test_the_access_log_streams_prefix_requests_to_analytics(descriptor_set: Path) -> None:
    config = render(
        descriptor_set, prefix_log_cluster="analytics", prefix_log_credential="admin-secret"
    )
    logs = connection_manager(config)["access_log"]
    (grpc_log,) = [log for log in logs if log["name"] == "envoy.access_loggers.http_grpc"]
    assert grpc_log["filter"]["header_filter"]["header"]["string_match"] == {"prefix": "/e/"}
    common = grpc_log["typed_config"]["common_config"]
    assert common["grpc_service"]["envoy_grpc"] == {"cluster_name": "analytics"}
    assert common["grpc_service"]["initial_metadata"] == [
        {"key": "authorization", "value": "Bearer admin-secret"}
    ]
    assert grpc_log["typed_config"]["additional_request_headers_to_log"] == ["range"]
    # Without a cluster, no stream.
    assert len(connection_manager(render(descriptor_set))["access_log"]) == 1
    with pytest.raises(ValueError, match="prefix log"):
        render(descriptor_set, prefix_log_cluster="nowhere")


def test_the_floor_route_is_only_there_when_asked(descriptor_set: Path) -> None:
    assert all(route["name"] != "redirect_floor" for route in routes(render(descriptor_set)))
    floor = routes(render(descriptor_set, redirect_floor_path="/_floor"))[0]
    assert (floor["match"], floor["direct_response"]) == ({"path": "/_floor"}, {"status": 302})


def test_envoy_accepts_the_config(descriptor_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "envoy.json"
    out.write_text(
        json.dumps(
            render(
                descriptor_set,
                prefix_log_cluster="analytics",
                prefix_log_credential="t",
                trusted_proxy_hops=1,
                redirect_floor_path="/_floor",
            )
        )
    )
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
