"""docker-compose.yml cannot run here: keep it in step with what `make run` does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from devstack.stack import ROOT, SERVICES, PortPlan, Stack

HOST_ONLY = {"PODMESH_SERVICE", "PYTHONPATH", "PYTHONUNBUFFERED", "PODMESH_LOG_LEVEL"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port, from "127.0.0.1:HOST:CONTAINER" entries."""
    pairs = (str(entry).split(":")[-2:] for entry in service.get("ports", []))
    return {int(container): int(host) for host, container in pairs}


def test_compose_publishes_the_make_run_ports() -> None:
    plan = PortPlan.defaults({})
    services = compose()["services"]
    for name in SERVICES:
        env = services[name]["environment"]
        container_port = int(env["PODMESH_GRPC_PORT"])
        assert published(services[name])[container_port] == plan.grpc[name], name
        assert published(services[name])[int(env["PODMESH_METRICS_PORT"])] == plan.metrics[name]
    assert published(services["gateway"])[8080] == plan.gateway
    assert published(services["postgres"])[5432] == plan.postgres
    assert published(services["redis"])[6379] == plan.redis


def test_compose_gives_services_the_same_variables_as_the_stack(tmp_path: Path) -> None:
    stack = Stack(tmp_path, ports=PortPlan.defaults({}), env={})
    services = compose()["services"]
    for name in SERVICES:
        expected = set(stack.service_env(name)) - HOST_ONLY
        assert expected <= set(services[name]["environment"]), name
        assert services[name]["command"] == ["python", "-m", f"services.{name}"]
