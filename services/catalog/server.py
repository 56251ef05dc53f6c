"""Wires the catalog service (contract in proto/podmesh/catalog/v1; RPCs not built yet)."""

from podmesh.catalog.v1 import catalog_pb2

from services.shared.server import contract_only

DEFINITION = contract_only("catalog", catalog_pb2)
