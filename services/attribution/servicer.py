"""Maps AttributionService protobuf messages to attribution operations and back; nothing else.

Each area's RPCs are a mixin (`<area>/servicer.py`); RPCs without a method answer
UNIMPLEMENTED (the generated base class).
"""

from __future__ import annotations

from podmesh.attribution.v1 import attribution_pb2_grpc

from services.attribution.reports.conversions import Conversions
from services.attribution.reports.service import Reports
from services.attribution.reports.servicer import ReportRpcs


class AttributionServicer(ReportRpcs, attribution_pb2_grpc.AttributionServiceServicer):
    """The attribution API: pixels and site events, exposures, reports."""

    def __init__(self, *, reports: Reports, conversions: Conversions) -> None:
        self._reports = reports
        self._conversions = conversions
