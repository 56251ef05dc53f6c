"""Failing fast: how soon Envoy stops sending to a dead replica, and where retries go."""

from __future__ import annotations

from pathlib import Path

from tests.gateway.test_envoy_config import clusters, descriptor_set, grpc_route, render

__all__ = ["descriptor_set"]


def _seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


def test_a_dead_endpoint_is_unhealthy_within_two_seconds(descriptor_set: Path) -> None:
    for name, cluster in clusters(render(descriptor_set)).items():
        (check,) = cluster["health_checks"]
        worst = (_seconds(check["interval"]) + _seconds(check["interval_jitter"])) * check[
            "unhealthy_threshold"
        ] + _seconds(check["timeout"])
        assert worst <= 2.0, name
        assert _seconds(check["no_traffic_interval"]) == _seconds(check["interval"]), name
        outlier = cluster["outlier_detection"]
        assert outlier["enforcing_consecutive_gateway_failure"] == 100, name
        assert _seconds(outlier["base_ejection_time"]) <= 5.0, name


def test_idempotent_calls_are_retried_on_another_replica(descriptor_set: Path) -> None:
    config = render(descriptor_set)
    route = grpc_route(config, "/podmesh.analytics.v1.AnalyticsService/GetCountingSettings")
    policy = route["route"]["retry_policy"]
    assert {"reset", "connect-failure", "unavailable"} <= set(policy["retry_on"].split(","))
    predicates = [p["name"] for p in policy["retry_host_predicate"]]
    assert predicates == ["envoy.retry_host_predicates.previous_hosts"]
    # Enough picks that a retry almost never lands on the replica that just died.
    assert policy["host_selection_retry_max_attempts"] >= 10
    ingest = grpc_route(config, "/podmesh.analytics.v1.AnalyticsService/IngestListenerEvents")
    assert "retry_policy" not in ingest["route"]
