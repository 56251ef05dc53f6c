"""Listener requests to the measurement prefix, from Envoy's gRPC access log."""
