"""Maps AttributionService protobuf messages to attribution operations and back; nothing else.

Each area's RPCs are a mixin (services/attribution/<area>/servicer.py); RPCs without a
method here answer UNIMPLEMENTED (the generated base class).
"""

from __future__ import annotations

from podmesh.attribution.v1 import attribution_pb2_grpc

from services.attribution.sites.service import SiteEvents
from services.attribution.sites.servicer import SiteEventRpcs
from services.shared.pagination import PageTokens


class AttributionServicer(SiteEventRpcs, attribution_pb2_grpc.AttributionServiceServicer):
    """The attribution API: pixels and site events, exposures, reports."""

    def __init__(self, *, sites: SiteEvents, page_tokens: PageTokens) -> None:
        self._sites = sites
        self._page_tokens = page_tokens
