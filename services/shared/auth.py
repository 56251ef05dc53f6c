"""Who is calling and what they may do: principals, roles, scopes, permissions, tokens."""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import jwt

API_KEY_PREFIX = "pk_"
_API_KEY_SHOWN_CHARS = 10
_MIN_JWT_SECRET_BYTES = 32


class Permission(enum.StrEnum):
    PLATFORM_ADMIN = "platform.admin"
    TENANT_READ = "tenant.read"
    TENANT_WRITE = "tenant.write"
    USERS_READ = "users.read"
    USERS_WRITE = "users.write"
    API_KEYS_READ = "api_keys.read"
    API_KEYS_WRITE = "api_keys.write"
    AUDIT_READ = "audit.read"
    BILLING_MANAGE = "billing.manage"
    # Create, change or remove users with the owner role.
    OWNERS_MANAGE = "owners.manage"
    CATALOG_READ = "catalog.read"
    CATALOG_WRITE = "catalog.write"
    CAMPAIGN_READ = "campaign.read"
    CAMPAIGN_WRITE = "campaign.write"
    ATTRIBUTION_READ = "attribution.read"
    ATTRIBUTION_WRITE = "attribution.write"
    ANALYTICS_READ = "analytics.read"
    ANALYTICS_ADMIN = "analytics.admin"
    INGEST = "ingest"


class Access(enum.Enum):
    """Methods that need no specific permission."""

    # No credentials at all (Login, IntrospectCredential: the credential is the input).
    PUBLIC = "public"
    # Any valid credential.
    AUTHENTICATED = "authenticated"


@dataclass(frozen=True)
class CredentialOptional:
    """A method callable without any credential, whose servicer then decides from the
    request itself what the call may do (a web page's tracking pixel cannot keep a
    secret). A credential, when one is sent, must be valid and grant `permission`."""

    permission: Permission


MethodRule = Permission | Access | CredentialOptional


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    ANALYST = "analyst"
    VIEWER = "viewer"


class Scope(enum.StrEnum):
    INGEST = "ingest"
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"
    OWNER = "owner"


class PrincipalType(enum.StrEnum):
    USER = "user"
    API_KEY = "api_key"
    PLATFORM_ADMIN = "platform_admin"


_READ = frozenset(
    {
        Permission.TENANT_READ,
        Permission.USERS_READ,
        Permission.API_KEYS_READ,
        Permission.AUDIT_READ,
        Permission.CATALOG_READ,
        Permission.CAMPAIGN_READ,
        Permission.ATTRIBUTION_READ,
        Permission.ANALYTICS_READ,
    }
)
_DASHBOARDS = frozenset(
    {
        Permission.TENANT_READ,
        Permission.CATALOG_READ,
        Permission.CAMPAIGN_READ,
        Permission.ATTRIBUTION_READ,
        Permission.ANALYTICS_READ,
    }
)
_CONTENT_WRITE = frozenset(
    {Permission.CATALOG_WRITE, Permission.CAMPAIGN_WRITE, Permission.ATTRIBUTION_WRITE}
)
_ADMIN = (
    _READ
    | _CONTENT_WRITE
    | {
        Permission.TENANT_WRITE,
        Permission.USERS_WRITE,
        Permission.API_KEYS_WRITE,
        Permission.ANALYTICS_ADMIN,
        Permission.INGEST,
    }
)

ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.OWNER: frozenset(_ADMIN | {Permission.BILLING_MANAGE, Permission.OWNERS_MANAGE}),
    Role.ADMIN: frozenset(_ADMIN),
    Role.ANALYST: _READ,
    Role.VIEWER: _DASHBOARDS,
}
SCOPE_PERMISSIONS: Mapping[Scope, frozenset[Permission]] = {
    Scope.INGEST: frozenset({Permission.INGEST}),
    Scope.READ: _READ,
    Scope.WRITE: frozenset(_DASHBOARDS | _CONTENT_WRITE),
    Scope.ADMIN: frozenset(_ADMIN),
    Scope.OWNER: frozenset(_ADMIN | {Permission.BILLING_MANAGE, Permission.OWNERS_MANAGE}),
}
PLATFORM_ADMIN_PERMISSIONS = frozenset(
    {Permission.PLATFORM_ADMIN, Permission.TENANT_READ, Permission.TENANT_WRITE}
)


@dataclass(frozen=True)
class Principal:
    type: PrincipalType
    tenant_id: uuid.UUID | None
    subject_id: str = ""
    role: Role | None = None
    scopes: frozenset[Scope] = field(default_factory=frozenset)
    expires_at: datetime | None = None
    # For users: the version of their credentials the token was issued for.
    token_version: int = 0
    # What the tenant must do about its billing (payment past due); every service shows
    # it to the caller with each response.
    billing_warning: str = ""

    @property
    def permissions(self) -> frozenset[Permission]:
        if self.type is PrincipalType.PLATFORM_ADMIN:
            return PLATFORM_ADMIN_PERMISSIONS
        if self.type is PrincipalType.USER and self.role is not None:
            return ROLE_PERMISSIONS[self.role]
        granted: frozenset[Permission] = frozenset()
        for scope in self.scopes:
            granted |= SCOPE_PERMISSIONS[scope]
        return granted

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    @property
    def is_platform_admin(self) -> bool:
        return self.type is PrincipalType.PLATFORM_ADMIN


# The header (gRPC initial metadata) that carries a principal's billing warning.
BILLING_WARNING_HEADER = "podmesh-billing-warning"
PLATFORM_ADMIN = Principal(type=PrincipalType.PLATFORM_ADMIN, tenant_id=None)


def new_api_key_secret() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_hash(secret: str) -> bytes:
    # API keys carry 256 random bits, so a fast hash is safe and lets every request
    # be checked without a slow KDF.
    return hashlib.sha256(secret.encode()).digest()


def api_key_shown_prefix(secret: str) -> str:
    return secret[:_API_KEY_SHOWN_CHARS]


class JwtCodec:
    """Short-lived HS256 access tokens carrying tenant, user, role and token version.

    A valid signature only says who the token was issued to; whether that user still
    exists with that role and token version is the tenant service's to answer.
    """

    issuer = "podmesh"

    def __init__(self, secret: str, ttl_s: int) -> None:
        if len(secret.encode()) < _MIN_JWT_SECRET_BYTES:
            raise ValueError(
                f"PODMESH_JWT_SECRET must be at least {_MIN_JWT_SECRET_BYTES} bytes (RFC 7518 3.2)"
            )
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, role: Role, token_version: int
    ) -> tuple[str, datetime]:
        now = int(time.time())
        expires = now + self.ttl_s
        claims = {
            "iss": self.issuer,
            "sub": str(user_id),
            "tid": str(tenant_id),
            "role": role.value,
            "ver": token_version,
            "iat": now,
            "exp": expires,
            "jti": secrets.token_hex(8),
        }
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        return token, datetime.fromtimestamp(expires, UTC)

    def verify(self, token: str) -> Principal | None:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=self.issuer,
                options={"require": ["exp", "sub", "tid", "role", "ver"]},
            )
            version = claims["ver"]
            if not isinstance(version, int) or isinstance(version, bool):
                return None
            return Principal(
                type=PrincipalType.USER,
                tenant_id=uuid.UUID(claims["tid"]),
                subject_id=str(uuid.UUID(claims["sub"])),
                role=Role(claims["role"]),
                expires_at=datetime.fromtimestamp(claims["exp"], UTC),
                token_version=version,
            )
        except (jwt.PyJWTError, ValueError, KeyError):
            return None


class CredentialStore(Protocol):
    """Where credentials are checked against the tenant's current state."""

    async def verify_api_key(self, secret: str) -> Principal | None: ...

    # `claims` is what the token's verified signature says; the answer is whether the
    # user still exists with that role and token version.
    async def verify_user_token(self, token: str, claims: Principal) -> Principal | None: ...


class CredentialVerifier:
    """Turns a bearer credential into a principal, or None when it is not valid."""

    def __init__(self, admin_token: str, jwt_codec: JwtCodec, store: CredentialStore) -> None:
        self._admin_token = admin_token.encode()
        self._jwt = jwt_codec
        self._store = store

    async def verify(self, credential: str) -> Principal | None:
        if not credential:
            return None
        if self._admin_token and hmac.compare_digest(credential.encode(), self._admin_token):
            return PLATFORM_ADMIN
        if credential.startswith(API_KEY_PREFIX):
            return await self._store.verify_api_key(credential)
        # The signature is checked here first, so forged tokens cost no round trip.
        claims = self._jwt.verify(credential)
        if claims is None:
            return None
        return await self._store.verify_user_token(credential, claims)


def bearer_credential(authorization: str) -> str:
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return value.strip()
