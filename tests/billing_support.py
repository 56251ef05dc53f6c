"""Helpers for the billing tests: Stripe as the stand-in sees it, signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx

from devstack.localstripe import API_KEY, WEBHOOK_SECRET, LocalStripe

WEBHOOK_PATH = "/api/v1/billing/stripe:webhook"
# A card that always pays, known to localstripe and to Stripe's test mode.
CARD = "pm_card_visa"


async def stripe_get(localstripe: LocalStripe, path: str, **params: Any) -> Any:
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"{localstripe.url}/v1/{path}",
            params=params,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    response.raise_for_status()
    return response.json()


def request_id() -> tuple[tuple[str, str], ...]:
    return (("x-request-id", f"test-{uuid.uuid4().hex}"),)


def signed(payload: bytes, *, at: int | None = None, secret: str = WEBHOOK_SECRET) -> str:
    """A Stripe-Signature header for `payload`, as Stripe computes it."""
    timestamp = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def subscription_event(subscription: dict[str, Any], event_type: str) -> bytes:
    return json.dumps(
        {
            "id": f"evt_test_{uuid.uuid4().hex[:16]}",
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "data": {"object": subscription},
        }
    ).encode()
