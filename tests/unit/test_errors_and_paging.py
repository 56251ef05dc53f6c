"""Error mapping to google.rpc details, and opaque page tokens."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st

from services.shared.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    to_status,
)
from services.shared.pagination import Keyset, PageTokens


def _details(status: grpc.Status) -> status_pb2.Status:
    ((key, value),) = [m for m in status.trailing_metadata if m[0] == "grpc-status-details-bin"]
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


def test_invalid_argument_carries_error_info_and_field_violations() -> None:
    error = InvalidArgument(
        [
            FieldViolation("user.email", "must be an e-mail address"),
            FieldViolation("password", "too short"),
        ]
    )
    status = to_status(error)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    rich = _details(status)
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    assert rich.details[0].Unpack(info)
    assert rich.details[1].Unpack(bad)
    assert info.domain == "podmesh.dev"
    assert info.reason == "INVALID_ARGUMENT"
    assert [v.field for v in bad.field_violations] == ["user.email", "password"]


def test_not_found_reason_names_the_resource() -> None:
    status = to_status(NotFound("api key", "42"))
    info = error_details_pb2.ErrorInfo()
    _details(status).details[0].Unpack(info)
    assert status.code is grpc.StatusCode.NOT_FOUND
    assert info.reason == "API_KEY_NOT_FOUND"
    assert info.metadata["resource_id"] == "42"


def test_already_exists_keeps_its_reason() -> None:
    info = error_details_pb2.ErrorInfo()
    _details(to_status(AlreadyExists("taken", reason="TENANT_SLUG_TAKEN"))).details[0].Unpack(info)
    assert info.reason == "TENANT_SLUG_TAKEN"


@given(st.datetimes(timezones=st.just(UTC)), st.uuids())
def test_keyset_tokens_round_trip(when: datetime, row_id: uuid.UUID) -> None:
    keyset = Keyset(PageTokens(b"k"), {"list": "users"})
    assert keyset.after(keyset.next_token((when, row_id))) == (when, row_id)


def test_tokens_are_opaque_and_tamper_proof() -> None:
    keyset = Keyset(PageTokens(b"k"), {"list": "users"})
    token = keyset.next_token((datetime(2026, 1, 1, tzinfo=UTC), uuid.uuid4()))
    assert "2026" not in token
    with pytest.raises(InvalidArgument):
        keyset.after(token[:-3] + "AAA")
    with pytest.raises(InvalidArgument):
        Keyset(PageTokens(b"other key"), {"list": "users"}).after(token)
    with pytest.raises(InvalidArgument):
        Keyset(PageTokens(b"k"), {"list": "api_keys"}).after(token)
    with pytest.raises(InvalidArgument):
        keyset.after("not a token")
    assert keyset.after("") is None
