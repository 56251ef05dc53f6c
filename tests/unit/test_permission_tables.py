"""Every RPC a service implements has a declared permission, and no rule is stale."""

from __future__ import annotations

import importlib

import pytest
from google.protobuf import descriptor_pool

from services.shared.server import ServiceDefinition

SERVICES = ("tenant", "catalog", "campaign", "attribution", "analytics")


def definition(name: str) -> ServiceDefinition:
    module = importlib.import_module(f"services.{name}.server")
    found: ServiceDefinition = module.DEFINITION
    return found


@pytest.mark.parametrize("name", SERVICES)
def test_rules_cover_exactly_the_service_methods(name: str) -> None:
    service = definition(name)
    # A service may also serve another's contract (analytics: Envoy's access log service).
    methods = {
        f"/{full_name}/{m.name}"
        for full_name in service.service_names
        for m in descriptor_pool.Default().FindServiceByName(full_name).methods
    }
    assert set(service.rules) == methods
