"""Rules behind the tenant service's trust boundaries, without a running platform."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2, status_pb2

from services.shared.auth import JwtCodec, Principal, PrincipalType, Role, Scope
from services.shared.client_address import client_address
from services.shared.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    to_status,
)
from services.shared.validation import Violations
from services.tenant.domain import (
    ApiKey,
    check_new_password,
    require_owner_key_revocation_allowed,
    validate_sign_in,
)
from services.tenant.login_guard import ACCOUNT, ADDRESS, LoginGuard, TooManyAttempts

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret"
TENANT = uuid.uuid4()
NOW = datetime.now(UTC)


def _fields(v: Violations) -> list[str]:
    try:
        v.raise_if_any()
    except InvalidArgument as error:
        return [f.description for f in error.violations]
    return []


@pytest.mark.parametrize("password", ["", " " * 12, "\t\n  " * 10, "   short  pw   "])
def test_whitespace_does_not_count_towards_a_password(password: str) -> None:
    assert _fields(_checked(password))


@pytest.mark.parametrize(
    "password", ["correct horse battery", "  correct horse battery  ", "x" * 1024]
)
def test_passwords_are_taken_as_typed(password: str) -> None:
    assert _fields(_checked(password)) == []


def _checked(password: str) -> Violations:
    v = Violations()
    check_new_password(v, password, "password")
    return v


def test_sign_in_refuses_overlong_input_before_any_hashing() -> None:
    validate_sign_in("a@example.com", "x" * 1024)
    with pytest.raises(InvalidArgument) as refused:
        validate_sign_in("a@example.com", "x" * 1025)
    assert [v.field for v in refused.value.violations] == ["password"]


def test_tokens_without_a_token_version_are_refused() -> None:
    codec = JwtCodec(SECRET, ttl_s=60)
    claims = {
        "iss": "podmesh",
        "sub": str(uuid.uuid4()),
        "tid": str(TENANT),
        "role": "admin",
        "exp": int(time.time()) + 60,
    }
    assert codec.verify(jwt.encode(claims, SECRET, algorithm="HS256")) is None
    for version in ("1", True, 1.5):
        forged = jwt.encode({**claims, "ver": version}, SECRET, algorithm="HS256")
        assert codec.verify(forged) is None
    token, _ = codec.issue(TENANT, uuid.uuid4(), Role.ADMIN, 7)
    verified = codec.verify(token)
    assert verified is not None
    assert verified.token_version == 7


def owner_key(*, revoked: bool = False) -> ApiKey:
    return ApiKey(
        id=uuid.uuid4(),
        display_name="Owner key",
        scopes=frozenset({Scope.OWNER}),
        revoked_at=NOW - timedelta(days=1) if revoked else None,
    )


def caller(*scopes: Scope) -> Principal:
    return Principal(type=PrincipalType.API_KEY, tenant_id=TENANT, scopes=frozenset(scopes))


def test_only_owners_revoke_owner_keys_and_never_the_last() -> None:
    with pytest.raises(PermissionDenied) as denied:
        require_owner_key_revocation_allowed(caller(Scope.ADMIN), owner_key(), 5, NOW)
    assert denied.value.reason == "OWNER_PROTECTED"
    with pytest.raises(FailedPrecondition) as last:
        require_owner_key_revocation_allowed(caller(Scope.OWNER), owner_key(), 1, NOW)
    assert last.value.reason == "LAST_OWNER_CREDENTIAL"
    require_owner_key_revocation_allowed(caller(Scope.OWNER), owner_key(), 2, NOW)
    # An owner key already revoked is no credential to keep.
    require_owner_key_revocation_allowed(caller(Scope.OWNER), owner_key(revoked=True), 1, NOW)
    # Other keys are not the owners' business.
    read_key = ApiKey(id=uuid.uuid4(), display_name="r", scopes=frozenset({Scope.READ}))
    require_owner_key_revocation_allowed(caller(Scope.ADMIN), read_key, 0, NOW)


def test_backoff_doubles_after_the_free_attempts_up_to_its_cap() -> None:
    waits = [ACCOUNT.wait_s(n) for n in range(1, ACCOUNT.free + 4)]
    assert waits[: ACCOUNT.free - 1] == [0.0] * (ACCOUNT.free - 1)
    assert waits[ACCOUNT.free - 1 :] == [1.0, 2.0, 4.0, 8.0]
    assert ACCOUNT.wait_s(10_000) == ACCOUNT.max_s
    assert ADDRESS.free > ACCOUNT.free


async def test_without_redis_sign_ins_are_still_limited_in_process() -> None:
    # Nothing listens on port 1: every Redis call fails at once.
    unreachable = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    guard = LoginGuard(unreachable)
    try:
        for _ in range(ACCOUNT.free):
            await guard.charge("acme", "ana@example.com", "192.0.2.1")
        with pytest.raises(TooManyAttempts) as held:
            await guard.charge("acme", "ana@example.com", "192.0.2.1")
        assert 0 < held.value.retry_after_s <= ACCOUNT.base_s
        # Another account from another address is not locked out by the outage.
        charge = await guard.charge("acme", "bo@example.com", "192.0.2.2")
        await guard.refund(charge)
        # A right password clears its account.
        await guard.charge("acme", "bo@example.com", "192.0.2.2")
    finally:
        await unreachable.aclose()


@pytest.mark.parametrize(
    ("metadata", "peer", "expected"),
    [
        ((("x-forwarded-for", "198.51.100.7"),), "ipv4:127.0.0.1:5000", "198.51.100.7"),
        # The client's own entries come first; Envoy appends the one it saw.
        ((("x-forwarded-for", "10.0.0.1, 198.51.100.7"),), "ipv4:127.0.0.1:1", "198.51.100.7"),
        ((), "ipv4:203.0.113.9:443", "203.0.113.9"),
        ((), "ipv6:[2001:db8:1:2:3::4]:443", "2001:db8:1:2::/64"),
        ((("x-forwarded-for", "::ffff:192.0.2.5"),), "ipv4:127.0.0.1:1", "192.0.2.5"),
        ((("x-forwarded-for", "garbage"),), "ipv4:127.0.0.1:1", "garbage"),
    ],
)
def test_client_address(metadata: tuple[tuple[str, str], ...], peer: str, expected: str) -> None:
    assert client_address(metadata, peer) == expected


def test_throttling_says_when_to_try_again() -> None:
    status = to_status(ResourceExhausted("slow down", reason="LOGIN_THROTTLED", retry_delay_s=2.5))
    details = status_pb2.Status.FromString(
        dict(status.trailing_metadata)["grpc-status-details-bin"]
    )
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in details.details)
    assert retry.retry_delay.ToTimedelta() == timedelta(seconds=2.5)
