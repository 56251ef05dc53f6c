"""deploy/'s alerting rules and dashboard: well formed, and every metric they use exists
in what the running platform's services and Envoy expose."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from devstack.procs import free_ports
from devstack.stack import ROOT, SERVICES, Stack
from services.shared import healthcheck

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "podmesh-overview.json"
COLLECTOR = DEPLOY / "otel" / "collector.yaml"

DURATION = r"^[0-9]+(ms|s|m|h|d|w|y)$"
# Prometheus' rule file format (the parts we use), as `promtool check rules` reads it.
RULES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "rules"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "interval": {"type": "string", "pattern": DURATION},
                    "rules": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["alert", "expr", "labels", "annotations"],
                            "additionalProperties": False,
                            "properties": {
                                "alert": {"type": "string", "pattern": "^[A-Z][A-Za-z0-9]+$"},
                                "expr": {"type": "string", "minLength": 1},
                                "for": {"type": "string", "pattern": DURATION},
                                "labels": {
                                    "type": "object",
                                    "required": ["severity"],
                                    "properties": {"severity": {"enum": ["page", "ticket"]}},
                                },
                                "annotations": {
                                    "type": "object",
                                    "required": ["summary"],
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}

# The parts of Grafana's dashboard model that provisioning needs.
DASHBOARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-z0-9-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 30},
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos", "targets"],
                "properties": {
                    "id": {"type": "integer"},
                    "gridPos": {
                        "type": "object",
                        "required": ["x", "y", "w", "h"],
                        "properties": {
                            "x": {"type": "integer", "minimum": 0, "maximum": 23},
                            "w": {"type": "integer", "minimum": 1, "maximum": 24},
                        },
                    },
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "object", "required": ["refId", "expr"]},
                    },
                },
            },
        },
    },
}

METRIC = re.compile(r"\b((?:podmesh|process|envoy)_[a-z0-9_]+)\b")
# What `changes()`/`rate()` and friends are, not metric names.
ALERTS_REQUIRED = {
    "PodmeshMethodErrorRatioHigh",
    "PodmeshLatencySloFastBurn",
    "PodmeshIngestionLagging",
    "PodmeshCompleteUntilFallingBehind",
    "PodmeshPostgresDown",
    "PodmeshRedisDown",
    "PodmeshRestarting",
}


def rule_exprs() -> dict[str, str]:
    rules = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def balanced(expr: str) -> bool:
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for char in re.sub(r'"[^"]*"', '""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def test_alert_rules_are_well_formed_and_cover_the_issue() -> None:
    rules = yaml.safe_load(RULES.read_text())
    jsonschema.validate(rules, RULES_SCHEMA)
    exprs = rule_exprs()
    assert set(exprs) >= ALERTS_REQUIRED
    assert [name for name, expr in exprs.items() if not balanced(expr)] == []


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    jsonschema.validate(dashboard, DASHBOARD_SCHEMA)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(balanced(expr) for expr in dashboard_exprs())


def test_collector_has_a_traces_pipeline() -> None:
    config = yaml.safe_load(COLLECTOR.read_text())
    pipeline = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(config[kind]), kind
    assert pipeline["processors"][0] == "memory_limiter"
    assert "otlp" in pipeline["receivers"]


def without_labels(expr: str) -> str:
    """The expression without label matchers and grouping clauses: metric names remain."""
    expr = re.sub(r"\{[^{}]*\}", "", expr)
    return re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)


def exposed_names(exposition: str) -> set[str]:
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}_{suffix}" for suffix in ("bucket", "count", "sum"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
async def test_every_metric_used_exists_in_the_running_platform(stack: Stack, source: str) -> None:
    names: set[str] = set()
    async with httpx.AsyncClient(timeout=10.0) as client:
        for service in SERVICES:
            names |= exposed_names((await client.get(stack.metrics_url(service))).text)
        envoy = await client.get(f"{stack.envoy_admin_url}/stats/prometheus")
        names |= exposed_names(envoy.text)
    exprs = list(rule_exprs().values()) if source == "alerts" else dashboard_exprs()
    used = {name for expr in exprs for name in METRIC.findall(without_labels(expr))}
    assert used
    assert sorted(used - names) == []


def test_the_compose_healthcheck_tells_serving_from_gone(stack: Stack) -> None:
    (port,) = free_ports(1)
    assert healthcheck.main([stack.service_addr("tenant")]) == 0
    assert healthcheck.main([f"127.0.0.1:{port}"]) == 1
