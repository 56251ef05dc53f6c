"""Settings every service reads from its environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PODMESH_", extra="ignore", populate_by_name=True)

    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    # 0 turns the Prometheus endpoint off.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    # How long in-flight RPCs may run after SIGTERM before they are cancelled.
    shutdown_grace_s: float = 10.0

    database_url: str = Field(
        default="postgresql://podmesh_app@127.0.0.1:5432/podmesh",
        validation_alias=_env("DATABASE_URL"),
    )
    db_pool_min: int = 2
    db_pool_max: int = 10
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL"))

    # The platform administrator's bearer token; only it can create tenants.
    admin_token: SecretStr = SecretStr("")
    jwt_secret: SecretStr = SecretStr("")
    jwt_ttl_s: int = 3600
    # Keys the per-tenant HMAC that turns client IPs into household ids.
    ip_hash_secret: SecretStr = SecretStr("")
    # Verified API keys are cached this long by services other than tenant, so a
    # revocation reaches them within this many seconds.
    auth_cache_ttl_s: float = 10.0

    tenant_addr: str = "127.0.0.1:50051"
    catalog_addr: str = "127.0.0.1:50052"
    campaign_addr: str = "127.0.0.1:50053"
    attribution_addr: str = "127.0.0.1:50054"
    analytics_addr: str = "127.0.0.1:50055"
