"""Maps AttributionService protobuf messages to attribution operations and back; nothing else.

Each area's RPCs are a mixin of its own (`<area>/servicer.py`): sites (pixels and site
events), exposures, reports.
"""

from __future__ import annotations

from podmesh.attribution.v1 import attribution_pb2_grpc

from services.attribution.exposures.operations import Exposures
from services.attribution.exposures.servicer import ExposureRpcs
from services.attribution.reports.conversions import Conversions
from services.attribution.reports.service import Reports
from services.attribution.reports.servicer import ReportRpcs
from services.attribution.sites.service import SiteEvents
from services.attribution.sites.servicer import SiteEventRpcs
from services.shared.pagination import PageTokens


class AttributionServicer(
    SiteEventRpcs, ExposureRpcs, ReportRpcs, attribution_pb2_grpc.AttributionServiceServicer
):
    """The attribution API: pixels and site events, exposures, reports."""

    def __init__(
        self,
        *,
        sites: SiteEvents,
        page_tokens: PageTokens,
        exposures: Exposures,
        reports: Reports,
        conversions: Conversions,
    ) -> None:
        self._sites = sites
        self._page_tokens = page_tokens
        self._exposures = exposures
        self._reports = reports
        self._conversions = conversions
