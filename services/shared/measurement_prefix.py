"""Podmesh's measurement prefix: `https://{gateway}/e/{prefix}/{url-without-scheme}`.

The prefix is a tenant's public id, derived from its id rather than stored: nothing is
issued, looked up or rotated, and a listener's request never waits on a lookup. It is
not a secret (it is printed in public feeds, and a tenant id grants nothing); all it
tells a reader is which feeds share a tenant, as any per-tenant prefix does. The podcast
and episode come from the media URL after it, resolved through the catalog.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import uuid

PATH_PREFIX = "/e/"
# "pm" and the 26 base32 characters of the tenant id's 16 bytes, lower case.
_PREFIX_ID = re.compile(r"^pm[a-z2-7]{26}$")
PREFIX_ID_PATTERN = r"pm[a-z2-7]{26}"


def prefix_id(tenant_id: uuid.UUID) -> str:
    return "pm" + base64.b32encode(tenant_id.bytes).decode().rstrip("=").lower()


# The access log receiver asks once per request, nearly always about the same few
# prefixes; base32 decoding was a third of its per-request work.
@functools.lru_cache(maxsize=4096)
def tenant_of_prefix(prefix: str) -> uuid.UUID | None:
    """The tenant a prefix id names, or None when it is not one."""
    if not _PREFIX_ID.match(prefix):
        return None
    try:
        return uuid.UUID(bytes=base64.b32decode(prefix[2:].upper() + "======"))
    except (binascii.Error, ValueError):
        return None


def prefixed_url(gateway_base_url: str, tenant_id: uuid.UUID, media_url: str) -> str:
    """The enclosure URL to put in a feed: the media URL behind the tenant's prefix."""
    target = re.sub(r"^https://", "", media_url.strip(), flags=re.IGNORECASE)
    return f"{gateway_base_url.rstrip('/')}{PATH_PREFIX}{prefix_id(tenant_id)}/{target}"
