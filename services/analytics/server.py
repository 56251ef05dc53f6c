"""Wires the analytics service (contract in proto/podmesh/analytics/v1; RPCs not built yet)."""

from podmesh.analytics.v1 import analytics_pb2

from services.shared.server import contract_only

DEFINITION = contract_only("analytics", analytics_pb2)
