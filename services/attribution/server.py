"""Wires the attribution service (contract in proto/podmesh/attribution/v1; RPCs not built yet)."""

from podmesh.attribution.v1 import attribution_pb2

from services.shared.server import contract_only

DEFINITION = contract_only("attribution", attribution_pb2)
