"""What each attribution RPC requires of its caller."""

from __future__ import annotations

from services.shared.auth import MethodRule, Permission

SERVICE = "podmesh.attribution.v1.AttributionService"

_READ = Permission.ATTRIBUTION_READ
_WRITE = Permission.ATTRIBUTION_WRITE
_BY_METHOD: dict[str, MethodRule] = {
    "StreamSiteEvents": Permission.INGEST,
    "TrackSiteEvents": Permission.INGEST,
    "ListSiteEvents": _READ,
    "IngestExposures": Permission.INGEST,
    "ListExposures": _READ,
    # Analytics' exposure relay, which acts for no user.
    "ApplyAdDeliveries": Permission.PLATFORM_ADMIN,
    "CreatePixel": _WRITE,
    "GetPixel": _READ,
    "ListPixels": _READ,
    "UpdatePixel": _WRITE,
    "DeletePixel": _WRITE,
    "GetCampaignReport": _READ,
    "CompareModels": _READ,
    "ListConversions": _READ,
}
RULES = {f"/{SERVICE}/{method}": rule for method, rule in _BY_METHOD.items()}
