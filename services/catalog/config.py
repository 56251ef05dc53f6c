"""The catalog's own settings, on top of what every service reads."""

from __future__ import annotations

from pydantic import Field

from services.catalog.imports import Offload
from services.shared.config import Settings

MIB = 1024 * 1024


class CatalogSettings(Settings):
    # The largest feed document ImportFeed accepts, fetched or sent (decompressed).
    feed_max_bytes: int = 5 * MIB
    # The whole fetch of a feed, redirects included. Kept well under the
    # gateway's 30 s route timeout, so a slow feed fails with our reason.
    feed_timeout_s: float = 10.0
    feed_max_redirects: int = 5
    # Feeds (and transcripts) on private, loopback or link-local addresses are
    # refused unless this is set: only for tests and development.
    feed_allow_private_addresses: bool = False
    # podcast:transcript files fetched per import; later imports fetch the rest.
    transcript_fetches_per_import: int = 50
    transcript_max_bytes: int = 2 * MIB
    # All transcript fetches of one import together.
    transcript_budget_s: float = 8.0
    # Imports of one tenant running at once; more are refused (RESOURCE_EXHAUSTED,
    # IMPORT_IN_PROGRESS) until one finishes.
    imports_per_tenant: int = 1
    # Imports of all tenants running at once in one catalog process; more are
    # refused (RESOURCE_EXHAUSTED, IMPORTS_BUSY). Also the number of feed workers.
    imports_max_concurrent: int = 2
    # Where feeds are parsed and imports planned, off the event loop: "process"
    # (worker processes) or "thread" (which still holds the GIL from the loop).
    feed_offload: Offload = "process"
    # How long the tenant's podcast quota, read from the tenant service, is trusted:
    # a plan change reaches the catalog within this.
    tenant_quota_ttl_s: float = Field(default=30.0, gt=0)
    # How often audit records go to the tenant service's audit log.
    audit_relay_interval_s: float = Field(default=1.0, gt=0)
