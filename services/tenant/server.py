"""Wires the tenant service: it verifies credentials itself, straight from its tables."""

from __future__ import annotations

from grpc import aio
from podmesh.tenant.v1 import tenant_pb2_grpc

from services.shared.auth import CredentialVerifier
from services.shared.server import Resources, ServiceDefinition
from services.tenant.directory import TenantDirectory
from services.tenant.login_guard import LoginGuard
from services.tenant.permissions import RULES, SERVICE
from services.tenant.servicer import TenantServicer


def _directory(resources: Resources) -> TenantDirectory:
    return TenantDirectory(
        resources.db, resources.jwt, resources.page_tokens, LoginGuard(resources.redis)
    )


async def register(server: aio.Server, resources: Resources) -> None:
    directory = _directory(resources)
    verifier = CredentialVerifier(
        resources.settings.admin_token.get_secret_value(), resources.jwt, directory
    )
    tenant_pb2_grpc.add_TenantServiceServicer_to_server(TenantServicer(directory, verifier), server)


DEFINITION = ServiceDefinition(
    name="tenant",
    service_names=(SERVICE,),
    rules=RULES,
    register=register,
    api_key_verifier=_directory,
)
