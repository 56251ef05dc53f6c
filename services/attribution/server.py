"""Wires the attribution service: its settings, its peers and its operations."""

from __future__ import annotations

from grpc import aio
from podmesh.attribution.v1 import attribution_pb2_grpc

from services.attribution.permissions import RULES, SERVICE
from services.attribution.servicer import AttributionServicer
from services.shared.config import Settings
from services.shared.server import Resources, ServiceDefinition


class AttributionSettings(Settings):
    pass


async def register(server: aio.Server, resources: Resources) -> None:
    settings = resources.settings
    assert isinstance(settings, AttributionSettings)
    attribution_pb2_grpc.add_AttributionServiceServicer_to_server(AttributionServicer(), server)  # type: ignore[abstract]


DEFINITION = ServiceDefinition(
    name="attribution",
    service_names=(SERVICE,),
    rules=RULES,
    register=register,
    settings_type=AttributionSettings,
)
