"""Wires the tenant service: it verifies credentials itself, straight from its tables;
billing asks analytics for the events it meters."""

from __future__ import annotations

from datetime import timedelta

from grpc import aio
from podmesh.tenant.v1 import tenant_pb2_grpc

from services.shared.auth import CredentialVerifier
from services.shared.server import Resources, ServiceDefinition
from services.tenant.billing.ingest_usage import IngestUsage
from services.tenant.billing.reporter import UsageReporter
from services.tenant.billing.service import Billing
from services.tenant.billing.settings import TenantServiceSettings
from services.tenant.billing.stripe_api import StripeBilling
from services.tenant.directory import TenantDirectory
from services.tenant.login_guard import LoginGuard
from services.tenant.permissions import RULES, SERVICE
from services.tenant.servicer import TenantServicer


def _directory(resources: Resources) -> TenantDirectory:
    settings = resources.settings
    assert isinstance(settings, TenantServiceSettings)
    return TenantDirectory(
        resources.db,
        resources.jwt,
        resources.page_tokens,
        LoginGuard(resources.redis),
        timedelta(days=settings.billing_grace_days),
    )


async def register(server: aio.Server, resources: Resources) -> None:
    directory = _directory(resources)
    verifier = CredentialVerifier(
        resources.settings.admin_token.get_secret_value(), resources.jwt, directory
    )
    settings = resources.settings
    assert isinstance(settings, TenantServiceSettings)
    billing = Billing(
        resources.db,
        StripeBilling(settings.stripe_api_key.get_secret_value(), settings.stripe_api_base),
        settings.stripe_webhook_secret.get_secret_value(),
        settings.stripe_webhook_tolerance_s,
        timedelta(days=settings.billing_grace_days),
        IngestUsage(resources.channel("analytics"), settings.admin_token.get_secret_value()),
    )
    reporter = UsageReporter(billing, settings.billing_usage_interval_s)
    if settings.stripe_api_key.get_secret_value():
        reporter.start()
    tenant_pb2_grpc.add_TenantServiceServicer_to_server(
        TenantServicer(directory, verifier, billing, background=(reporter,)), server
    )


DEFINITION = ServiceDefinition(
    name="tenant",
    service_names=(SERVICE,),
    rules=RULES,
    register=register,
    api_key_verifier=_directory,
    settings_type=TenantServiceSettings,
)
