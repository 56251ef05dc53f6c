"""Maps AttributionService protobuf messages to attribution operations and back; nothing else.

RPCs without a method here answer UNIMPLEMENTED (the generated base class).
"""

from __future__ import annotations

from podmesh.attribution.v1 import attribution_pb2_grpc


class AttributionServicer(attribution_pb2_grpc.AttributionServiceServicer):
    """The attribution API: pixels and site events, exposures, reports."""
