"""Wires the campaign service (contract in proto/podmesh/campaign/v1; RPCs not built yet)."""

from podmesh.campaign.v1 import campaign_pb2

from services.shared.server import contract_only

DEFINITION = contract_only("campaign", campaign_pb2)
