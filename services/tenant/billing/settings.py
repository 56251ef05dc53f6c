"""The tenant service's settings: the shared ones plus Stripe's."""

from __future__ import annotations

from pydantic import Field, SecretStr

from services.shared.config import Settings


class TenantServiceSettings(Settings):
    # Secret API key ("sk_..."); empty turns billing calls off (FAILED_PRECONDITION).
    stripe_api_key: SecretStr = SecretStr("")
    # Where the Stripe API is; the test suite points it at a localstripe process.
    stripe_api_base: str = "https://api.stripe.com"
    # The signing secret of the webhook endpoint ("whsec_...").
    stripe_webhook_secret: SecretStr = SecretStr("")
    # How old a signed webhook may be, against replays.
    stripe_webhook_tolerance_s: int = Field(default=300, gt=0)
    # Days a past-due tenant keeps ingesting before it becomes read-only.
    billing_grace_days: int = Field(default=7, ge=0)
    # How often each subscribed tenant's usage is recorded and reported to Stripe.
    billing_usage_interval_s: float = Field(default=3600.0, gt=0)
