"""Degraded modes: a dependency's transitions logged once, counted, and reported."""

from __future__ import annotations

import logging

import pytest

from services.shared.dependencies import DEGRADED, DEPENDENCY_UP, DependencyWatch, Probe
from services.shared.server import peer_channel_options


class Switch:
    def __init__(self) -> None:
        self.up = True

    async def __call__(self) -> object:
        if not self.up:
            raise ConnectionError("refused")
        return 1


async def test_transitions_are_logged_once_and_postgres_decides_health(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="podmesh.dependencies")
    postgres, redis = Switch(), Switch()
    probes: dict[str, Probe] = {"postgres": postgres, "redis": redis}
    health: list[bool] = []

    async def on_required(up: bool) -> None:
        health.append(up)

    watch = DependencyWatch("unit", lambda: probes, on_required)
    await watch.check()
    redis.up = False
    for _ in range(5):
        await watch.check()
    assert DEGRADED.labels("unit")._value.get() == 1
    assert DEPENDENCY_UP.labels("unit", "redis")._value.get() == 0
    redis.up = True
    postgres.up = False
    await watch.check()
    await watch.check()
    postgres.up = True
    await watch.check()

    downs = [r for r in caplog.records if r.getMessage() == "dependency down"]
    backs = [r for r in caplog.records if r.getMessage() == "dependency back"]
    assert [r.fields["dependency"] for r in downs] == ["redis", "postgres"]  # type: ignore[attr-defined]
    assert [r.fields["dependency"] for r in backs] == ["redis", "postgres"]  # type: ignore[attr-defined]
    assert health == [False, True]
    assert DEGRADED.labels("unit")._value.get() == 0


def test_peers_are_balanced_only_over_several_replicas() -> None:
    single = dict(peer_channel_options("127.0.0.1:50052"))
    assert "grpc.lb_policy_name" not in single
    for address in ("ipv4:127.0.0.1:50052,127.0.0.1:50152", "dns:///catalog:50052"):
        assert dict(peer_channel_options(address))["grpc.lb_policy_name"] == "round_robin"


def test_a_restarted_peer_is_reached_again_within_a_second() -> None:
    for address in ("127.0.0.1:50052", "ipv4:127.0.0.1:50052,127.0.0.1:50152"):
        assert dict(peer_channel_options(address))["grpc.max_reconnect_backoff_ms"] == 1000
