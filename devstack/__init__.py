"""Starts the local platform for `make run` and the tests."""

import os

# The devstack starts servers (as another user) from processes that hold gRPC
# channels; gRPC's fork handlers then crash the child. We only fork to exec.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
