"""What each attribution RPC requires of its caller, and of its requests."""

from __future__ import annotations

from services.shared.auth import CredentialOptional, MethodRule, Permission
from services.shared.batch_stream import MAX_BATCH_BYTES
from services.shared.config import Settings
from services.shared.inputs import MIB, InputRule, InputRules

SERVICE = "podmesh.attribution.v1.AttributionService"

_READ = Permission.ATTRIBUTION_READ
_WRITE = Permission.ATTRIBUTION_WRITE
_BY_METHOD: dict[str, MethodRule] = {
    "StreamSiteEvents": Permission.INGEST,
    # A web page's pixel cannot keep a secret: without a credential, only events of
    # active pixels from their allowed origins are stored (services.attribution.sites).
    "TrackSiteEvents": CredentialOptional(Permission.INGEST),
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

# Batches over 4 MiB are refused by the method itself (BATCH_TOO_LARGE, after the
# batches of a stream before it); the margin keeps that answer for batches just over.
# Events are checked one by one (services.attribution.sites.records): one with a NUL is
# rejected alone, so the shared walk leaves them out.
_BATCH = InputRule(max_bytes=MAX_BATCH_BYTES + MIB, unchecked_fields=frozenset({"events"}))
_INPUTS_BY_METHOD: dict[str, InputRule] = {
    "StreamSiteEvents": _BATCH,
    "TrackSiteEvents": _BATCH,
}


def inputs(settings: Settings) -> InputRules:
    return {f"/{SERVICE}/{method}": rule for method, rule in _INPUTS_BY_METHOD.items()}
