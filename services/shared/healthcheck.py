"""`python -m services.shared.healthcheck HOST:PORT`: exit 0 when the gRPC server there
answers grpc.health.v1 Check("") with SERVING, 1 otherwise.

For container healthchecks (docker-compose.yml), where no grpc_health_probe binary is
installed; Kubernetes probes gRPC natively.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def serving(address: str, timeout_s: float = 2.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m services.shared.healthcheck HOST:PORT", file=sys.stderr)
        return 2
    return 0 if serving(argv[0]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
