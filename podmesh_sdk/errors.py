"""gRPC errors as Podmesh reports them: the google.rpc.Status reason and fields."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2


@dataclass
class PodmeshError(Exception):
    """A failed call: its gRPC code, message, ErrorInfo reason and BadRequest fields."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    fields: list[tuple[str, str]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        head = self.code.name + (f" {self.reason}" if self.reason else "")
        text = f"{head}: {self.message}"
        for name, description in self.fields:
            text += f"\n  field {name}: {description}"
        return text

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> PodmeshError:
        call: grpc.Call = error  # type: ignore[assignment]
        code = call.code()
        details = call.details() or ""
        found = cls(code, details)
        for key, value in call.trailing_metadata() or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
                found.message = status.message or details
                for detail in status.details:
                    info = error_details_pb2.ErrorInfo()
                    bad = error_details_pb2.BadRequest()
                    if detail.Unpack(info):
                        found.reason = info.reason
                        found.metadata = dict(info.metadata)
                    elif detail.Unpack(bad):
                        found.fields += [(v.field, v.description) for v in bad.field_violations]
        return found
