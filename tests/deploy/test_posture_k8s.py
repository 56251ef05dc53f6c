"""deploy/k8s: every manifest valid against Kubernetes' own schemas, and every part of
the platform there with the posture the issue asks for."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from devstack.stack import ROOT, SERVICES, PortPlan

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in kustomization()["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in manifests() if d["kind"] == kind}


def test_kustomization_lists_every_file() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml")))
def test_manifests_validate_against_the_kubernetes_schemas(path: str) -> None:
    if path == "kustomization.yaml":
        return
    docs = [d for d in yaml.safe_load_all((K8S / path).read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_service_has_grpc_probes_a_budget_and_an_autoscaler() -> None:
    deployments = by_kind("Deployment")
    budgets = by_kind("PodDisruptionBudget")
    scalers = by_kind("HorizontalPodAutoscaler")
    ports = PortPlan.defaults({}).grpc
    for name in SERVICES:
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == ports[name], (name, probe)
        assert deployments[name]["spec"]["replicas"] >= 2
        assert (
            budgets[name]["spec"]["selector"]["matchLabels"]
            == (deployments[name]["spec"]["selector"]["matchLabels"])
        )
        target = scalers[name]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert scalers[name]["spec"]["minReplicas"] >= 2
    assert {"gateway", "reflection", "redis"} <= set(deployments)
    assert "postgres" in by_kind("StatefulSet")
    assert "gateway" in scalers
    assert "gateway" in budgets


def test_tokens_come_from_a_secret_and_migrations_from_a_job() -> None:
    secret = by_kind("Secret")["podmesh-tokens"]
    for token in ("PODMESH_ADMIN_TOKEN", "PODMESH_JWT_SECRET", "PODMESH_IP_HASH_SECRET"):
        assert token in secret["stringData"]
    config = by_kind("ConfigMap")["podmesh-config"]["data"]
    assert not any("TOKEN" in key or "SECRET" in key for key in config)
    for name in SERVICES:
        (container,) = by_kind("Deployment")[name]["spec"]["template"]["spec"]["containers"]
        assert {"secretRef": {"name": "podmesh-tokens"}} in container["envFrom"]
    (migrate,) = by_kind("Job")["migrate"]["spec"]["template"]["spec"]["containers"]
    assert migrate["command"] == ["python", "-m", "services.shared.migrations"]


def test_the_gateway_knows_every_service_by_its_headless_service() -> None:
    services = by_kind("Service")
    (render,) = by_kind("Deployment")["gateway"]["spec"]["template"]["spec"]["initContainers"]
    script = render["command"][-1]
    ports = PortPlan.defaults({}).grpc
    for name in SERVICES:
        assert f"--upstream {name}={name}:{ports[name]}" in script
        assert services[name]["spec"]["clusterIP"] == "None"


def test_compose_restarts_and_checks_every_container() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        if name == "migrate":
            # One-shot: retried until it succeeds, then done.
            assert service["restart"] == "on-failure"
            continue
        assert service["restart"] in ("unless-stopped", "always"), name
        assert service["healthcheck"]["test"], name
    for name in SERVICES:
        port = compose["services"][name]["environment"]["PODMESH_GRPC_PORT"]
        assert compose["services"][name]["healthcheck"]["test"][-1] == f"127.0.0.1:{port}"


def test_deploy_files_are_where_the_readme_says() -> None:
    for path in ("prometheus/alerts.yml", "grafana/podmesh-overview.json", "otel/collector.yaml"):
        assert (ROOT / "deploy" / path).is_file(), path
