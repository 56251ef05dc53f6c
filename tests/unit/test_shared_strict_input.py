"""The shared input checks without a running stack: the message walk, the guarded
deserializer, bounded error details, request ids, page tokens and time zones."""

from __future__ import annotations

import base64
import importlib
import re
import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pool, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from podmesh.analytics.v1 import analytics_pb2
from podmesh.tenant.v1 import tenant_pb2

from services.analytics.counting import IpExclusions, IpHasher
from services.analytics.ingest.records import (
    TEXT_FIELDS,
    CheckedBatch,
    Episode,
    check_batch,
    episode_references,
)
from services.shared.auth import Principal, PrincipalType
from services.shared.context import principal_var
from services.shared.errors import (
    MAX_VIOLATIONS_SHOWN,
    DomainError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    to_status,
)
from services.shared.inputs import (
    DEFAULT_MAX_REQUEST_BYTES,
    MIB,
    InputRule,
    accept,
    guarded_deserializer,
    receive_limit,
    text_and_enum_violations,
)
from services.shared.interceptors import request_id
from services.shared.pagination import MAX_TOKEN_CHARS, PageTokens
from services.shared.server import ServiceDefinition
from services.shared.timezones import is_time_zone, time_zone


def _fields(violations: list[FieldViolation]) -> list[str]:
    return [v.field for v in violations]


# --- the walk ---------------------------------------------------------------------------


def test_nul_is_found_in_nested_repeated_and_map_fields() -> None:
    event = tenant_pb2.AuditEvent(
        method="ok", request_id="r\0", details={"fine": "x\0y", "k\0ey": "v"}
    )
    listed = tenant_pb2.ListAuditEventsResponse(audit_events=[tenant_pb2.AuditEvent(), event])

    found = text_and_enum_violations(listed)

    assert sorted(_fields(found)) == [
        "audit_events[1].details",
        "audit_events[1].details[fine]",
        "audit_events[1].request_id",
    ]
    assert {v.reason for v in found} == {"NUL_CHARACTER"}


def test_recursive_types_are_walked() -> None:
    inner = struct_pb2.Struct()
    inner.update({"deep": {"list": ["ok", "bad\0"]}})

    assert _fields(text_and_enum_violations(inner)) == [
        "fields[deep].struct_value.fields[list].list_value.values[1].string_value"
    ]


def test_undeclared_enum_numbers_are_found_scalar_repeated_and_zero_is_left_alone() -> None:
    settings = tenant_pb2.TenantSettings(time_zone="UTC")
    settings.counting_window = 99  # type: ignore[assignment]
    query = analytics_pb2.QueryMetricsRequest(metrics=[analytics_pb2.METRIC_DOWNLOADS])
    query.metrics.append(42)  # type: ignore[arg-type]

    assert _fields(text_and_enum_violations(settings)) == ["counting_window"]
    assert _fields(text_and_enum_violations(query)) == ["metrics[1]"]
    assert text_and_enum_violations(tenant_pb2.TenantSettings()) == []


def test_a_methods_unchecked_fields_are_skipped_at_the_top_only() -> None:
    batch = analytics_pb2.IngestListenerEventsRequest(
        requests=[analytics_pb2.ListenerRequest(id="a\0")]
    )
    rule = InputRule(unchecked_fields=frozenset({"requests"}))

    assert accept(batch, rule) is batch
    with pytest.raises(InvalidArgument) as caught:
        accept(batch, InputRule())
    assert _fields(caught.value.violations) == ["requests[0].id"]


def test_the_guarded_deserializer_hands_on_errors_instead_of_raising() -> None:
    parse = guarded_deserializer(tenant_pb2.LoginRequest.FromString, 100)
    good = tenant_pb2.LoginRequest(tenant_slug="acme").SerializeToString()

    assert accept(parse(good), InputRule()).tenant_slug == "acme"
    for raw, reason in (
        (b"\x0a\x02\xff\xfe", "MALFORMED_REQUEST"),
        (b"\xff\xff", "MALFORMED_REQUEST"),
        (tenant_pb2.LoginRequest(password="p" * 101).SerializeToString(), "REQUEST_TOO_LARGE"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            accept(parse(raw), InputRule())
        assert caught.value.reason == reason
    assert DEFAULT_MAX_REQUEST_BYTES == 64 * 1024


# --- error details ------------------------------------------------------------------------


def _rich(error: DomainError) -> tuple[grpc.Status, status_pb2.Status]:
    status = to_status(error)
    ((_, value),) = [m for m in status.trailing_metadata if m[0] == "grpc-status-details-bin"]
    return status, status_pb2.Status.FromString(value)


def test_thousands_of_violations_become_the_first_few_and_a_count() -> None:
    error = InvalidArgument(
        [FieldViolation(f"episode.ad_slots[{i}].position", "is required") for i in range(3000)]
    )

    status, rich = _rich(error)

    bad = error_details_pb2.BadRequest()
    assert rich.details[1].Unpack(bad)
    assert len(bad.field_violations) == MAX_VIOLATIONS_SHOWN + 1
    assert bad.field_violations[-1].description == "2980 more violations not shown"
    assert bad.field_violations[-1].reason == "MORE_VIOLATIONS"
    assert len(rich.SerializeToString()) < 4 * 1024
    assert len(status.details or "") <= 1024


def test_a_huge_value_in_a_message_or_metadata_is_cut() -> None:
    status, rich = _rich(NotFound("Podcast", "x" * 100_000))

    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    assert len(info.metadata["resource_id"]) <= 256
    assert len(status.details or "") <= 1024
    assert len(rich.SerializeToString()) < 2 * 1024


# --- request ids ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("supplied", "kept"),
    [
        ("abc-123_4.5:6", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        (None, False),
        ("line\nbreak", False),
        ("ünïcode", False),
        ("'; DROP TABLE audit_events; --", False),
    ],
)
def test_a_request_id_is_kept_only_when_short_and_plain(supplied: str | None, kept: bool) -> None:
    chosen = request_id(supplied)
    if kept:
        assert chosen == supplied
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", chosen)


# --- page tokens ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_caller() -> Iterator[None]:
    """Every test starts without a caller, and leaves none behind."""
    reset = principal_var.set(None)
    yield
    principal_var.reset(reset)


def _as(tenant: uuid.UUID | None) -> None:
    principal_var.set(Principal(type=PrincipalType.API_KEY, tenant_id=tenant))


TOKENS = PageTokens(b"x" * 32)
QUERY = {"list": "podcasts"}


def test_a_token_hides_its_cursor() -> None:
    _as(uuid.uuid4())
    token = TOKENS.encode({"t": "my secret title", "id": "0b6f6c3e"}, QUERY)

    blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"secret" not in blob
    assert b"0b6f6c3e" not in blob
    assert TOKENS.decode(token, QUERY) == {"t": "my secret title", "id": "0b6f6c3e"}


def test_a_token_is_bound_to_the_tenant_it_was_issued_to() -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    _as(first)
    token = TOKENS.encode({"id": "1"}, QUERY)

    for other in (second, None):
        _as(other)
        with pytest.raises(InvalidArgument) as caught:
            TOKENS.decode(token, QUERY)
        assert _fields(caught.value.violations) == ["page_token"]
    _as(first)
    assert TOKENS.decode(token, QUERY) == {"id": "1"}


def test_a_tampered_or_oversized_token_is_refused() -> None:
    _as(uuid.uuid4())
    token = TOKENS.encode({"id": "1"}, QUERY)
    flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]

    for bad in (flipped, token[:-4], "A" * (MAX_TOKEN_CHARS + 1)):
        with pytest.raises(InvalidArgument):
            TOKENS.decode(bad, QUERY)
    with pytest.raises(InvalidArgument) as caught:
        TOKENS.decode("A" * (MAX_TOKEN_CHARS + 1), QUERY)
    assert "longer than" in caught.value.violations[0].description


def test_the_largest_cursor_fits_the_token_bound() -> None:
    # A 1,000-character title of four-byte characters: the catalog's largest cursor.
    _as(uuid.uuid4())
    token = TOKENS.encode({"t": "\U0001f3a7" * 1000, "id": str(uuid.uuid4())}, QUERY)

    assert len(token) <= MAX_TOKEN_CHARS
    assert TOKENS.decode(token, QUERY) is not None


# --- time zones -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["localtime", "posixrules", "Factory", "../UTC", "", "utc"])
def test_names_that_are_no_iana_zone_are_refused(name: str) -> None:
    assert not is_time_zone(name)
    assert time_zone(name) is None


@pytest.mark.parametrize("name", ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires"])
def test_iana_zones_are_accepted(name: str) -> None:
    zone = time_zone(name)
    assert zone is not None
    assert zone.key == name


# --- the declared rules ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["tenant", "catalog", "analytics"])
def test_input_rules_name_declared_methods_and_real_fields(name: str) -> None:
    service: ServiceDefinition = importlib.import_module(f"services.{name}.server").DEFINITION
    inputs = service.inputs(service.settings_type())

    assert set(inputs) <= set(service.rules)
    pool = descriptor_pool.Default()
    for method, rule in inputs.items():
        service_name, method_name = method.strip("/").split("/")
        request = pool.FindServiceByName(service_name).methods_by_name[method_name].input_type
        assert rule.unchecked_fields <= set(request.fields_by_name), method
        assert rule.max_bytes >= DEFAULT_MAX_REQUEST_BYTES


def test_ingestion_leaves_its_records_to_the_per_record_checks() -> None:
    service: ServiceDefinition = importlib.import_module("services.analytics.server").DEFINITION
    inputs = service.inputs(service.settings_type())

    for method in ("StreamListenerEvents", "IngestListenerEvents"):
        rule = inputs[f"/podmesh.analytics.v1.AnalyticsService/{method}"]
        assert rule.unchecked_fields == {"requests"}
        assert rule.max_bytes > 4 * 1024 * 1024


def test_the_receive_limit_is_the_largest_method_limit_and_a_margin() -> None:
    rules = {"/a/B": InputRule(max_bytes=5 * MIB), "/a/C": InputRule()}

    assert receive_limit(rules) == 6 * MIB
    assert receive_limit({}) == DEFAULT_MAX_REQUEST_BYTES + MIB


# --- ingestion records --------------------------------------------------------------------


TENANT = uuid.uuid4()
EPISODE = Episode(str(uuid.uuid4()), str(uuid.uuid4()))
NOW_US = 1_800_000_000_000_000


def listener_request(**fields: str) -> analytics_pb2.ListenerRequest:
    values: dict[str, object] = {
        "id": f"r-{uuid.uuid4().hex[:8]}",
        "request_time": Timestamp(seconds=NOW_US // 1_000_000 - 3600),
        "episode_id": EPISODE.episode_id,
        "client_ip": "192.0.2.10",
        "user_agent": "Overcast/3.0",
        "http_method": "GET",
        "status_code": 206,
        "range": "bytes=0-",
        "bytes_served": 2_000_000,
    }
    values.update(fields)
    return analytics_pb2.ListenerRequest(**values)  # type: ignore[arg-type]


async def check(records: list[analytics_pb2.ListenerRequest]) -> CheckedBatch:
    return await check_batch(
        records,
        tenant_id=TENANT,
        by_id={EPISODE.episode_id: EPISODE},
        by_url={},
        hasher=IpHasher(b"test-platform-secret-0123456789", TENANT),
        exclusions=IpExclusions(),
        now_us=NOW_US,
        oldest_us=NOW_US - 86_400_000_000,
    )


@pytest.mark.parametrize("field", TEXT_FIELDS)
async def test_a_record_with_nul_in_any_text_field_is_rejected_alone(field: str) -> None:
    poisoned = listener_request(**{field: "a\0b"})
    batch = await check([listener_request(), poisoned, listener_request()])

    assert [(r.index, r.reason) for r in batch.rejections] == [
        (1, analytics_pb2.REJECTION_REASON_INVALID_TEXT)
    ]
    assert field in batch.rejections[0].message
    assert batch.rejections[0].request_id == ("" if field == "id" else poisoned.id)
    assert len(batch.rows) == 2
    assert episode_references([poisoned]) == (set(), set())
