"""Roles, scopes and credentials: who may do what."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.shared.auth import (
    PLATFORM_ADMIN,
    ROLE_PERMISSIONS,
    SCOPE_PERMISSIONS,
    CredentialVerifier,
    JwtCodec,
    Permission,
    Principal,
    PrincipalType,
    Role,
    Scope,
    api_key_hash,
    bearer_credential,
    new_api_key_secret,
)
from services.shared.errors import PermissionDenied
from services.tenant.domain import require_role_grant, require_scope_grant

TENANT = uuid.uuid4()
SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret"
OTHER_SECRET = "other-other-other-other-other-other"


def key(*scopes: Scope) -> Principal:
    return Principal(type=PrincipalType.API_KEY, tenant_id=TENANT, scopes=frozenset(scopes))


def user(role: Role) -> Principal:
    return Principal(type=PrincipalType.USER, tenant_id=TENANT, role=role)


def test_role_ladder_is_nested() -> None:
    assert ROLE_PERMISSIONS[Role.VIEWER] < ROLE_PERMISSIONS[Role.ANALYST]
    assert ROLE_PERMISSIONS[Role.ANALYST] < ROLE_PERMISSIONS[Role.ADMIN]
    assert ROLE_PERMISSIONS[Role.ADMIN] < ROLE_PERMISSIONS[Role.OWNER]


def test_analyst_reads_everything_and_writes_nothing() -> None:
    analyst = user(Role.ANALYST)
    assert analyst.can(Permission.AUDIT_READ)
    assert not any(p.value.endswith(("write", "manage", "admin")) for p in analyst.permissions)
    assert not analyst.can(Permission.INGEST)


def test_ingest_key_can_only_ingest() -> None:
    assert key(Scope.INGEST).permissions == {Permission.INGEST}


def test_platform_admin_is_not_a_tenant_member() -> None:
    assert PLATFORM_ADMIN.can(Permission.PLATFORM_ADMIN)
    assert not PLATFORM_ADMIN.can(Permission.USERS_WRITE)
    assert PLATFORM_ADMIN.tenant_id is None


@given(st.sets(st.sampled_from(list(Scope))), st.sets(st.sampled_from(list(Scope))))
def test_a_key_can_grant_exactly_what_it_holds(held: set[Scope], wanted: set[Scope]) -> None:
    holder = key(*held)
    granted = frozenset().union(*(SCOPE_PERMISSIONS[s] for s in wanted))
    if granted <= holder.permissions:
        require_scope_grant(holder, frozenset(wanted))
    else:
        with pytest.raises(PermissionDenied):
            require_scope_grant(holder, frozenset(wanted))


def test_admin_cannot_make_owners_but_owner_can() -> None:
    with pytest.raises(PermissionDenied):
        require_role_grant(user(Role.ADMIN), Role.OWNER)
    require_role_grant(user(Role.OWNER), Role.OWNER)
    require_role_grant(key(Scope.OWNER), Role.OWNER)
    require_role_grant(user(Role.ADMIN), Role.ADMIN)


def test_jwt_round_trip_and_rejections() -> None:
    codec = JwtCodec(SECRET, ttl_s=60)
    user_id = uuid.uuid4()
    token, expires = codec.issue(TENANT, user_id, Role.ANALYST, 3)
    principal = codec.verify(token)
    assert principal is not None
    assert (
        principal.tenant_id,
        principal.subject_id,
        principal.role,
        principal.token_version,
    ) == (TENANT, str(user_id), Role.ANALYST, 3)
    assert principal.expires_at == expires
    assert JwtCodec(OTHER_SECRET, ttl_s=60).verify(token) is None
    assert codec.verify(token[:-2] + "xx") is None
    expired = jwt.encode(
        {
            "iss": "podmesh",
            "sub": str(user_id),
            "tid": str(TENANT),
            "role": "viewer",
            "exp": int(time.time()) - 10,
        },
        SECRET,
        algorithm="HS256",
    )
    assert codec.verify(expired) is None


class _Keys:
    def __init__(self, secret: str) -> None:
        self.secret = secret

    async def verify_api_key(self, secret: str) -> Principal | None:
        return key(Scope.READ) if secret == self.secret else None

    async def verify_user_token(self, token: str, claims: Principal) -> Principal | None:
        return claims if claims.token_version == 1 else None


async def test_credential_verifier_routes_each_kind() -> None:
    secret = new_api_key_secret()
    codec = JwtCodec(SECRET, ttl_s=60)
    verifier = CredentialVerifier("admin-token", codec, _Keys(secret))
    assert await verifier.verify("admin-token") is PLATFORM_ADMIN
    api_key_principal = await verifier.verify(secret)
    assert api_key_principal is not None
    assert api_key_principal.type is PrincipalType.API_KEY
    token, _ = codec.issue(TENANT, uuid.uuid4(), Role.VIEWER, 1)
    user_principal = await verifier.verify(token)
    assert user_principal is not None
    assert user_principal.role is Role.VIEWER
    # A token the store no longer honours (its user's token version moved on).
    stale, _ = codec.issue(TENANT, uuid.uuid4(), Role.VIEWER, 2)
    assert await verifier.verify(stale) is None
    assert await verifier.verify("") is None
    assert await verifier.verify("admin-tokenX") is None
    assert await verifier.verify(new_api_key_secret()) is None


def test_api_keys_are_random_prefixed_and_hashed() -> None:
    a, b = new_api_key_secret(), new_api_key_secret()
    assert a.startswith("pk_")
    assert a != b
    assert len(api_key_hash(a)) == 32
    assert api_key_hash(a) != api_key_hash(b)


@pytest.mark.parametrize(
    ("header", "credential"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", ""), ("", ""), ("abc", "")],
)
def test_bearer_credential(header: str, credential: str) -> None:
    assert bearer_credential(header) == credential


def test_short_jwt_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        JwtCodec("short", ttl_s=60)
