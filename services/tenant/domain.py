"""Tenant domain: the model and the rules, independent of gRPC and SQL."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from services.shared.auth import (
    ROLE_PERMISSIONS,
    SCOPE_PERMISSIONS,
    Permission,
    Principal,
    Role,
    Scope,
)
from services.shared.errors import FailedPrecondition, NotFound, PermissionDenied
from services.shared.timezones import is_time_zone
from services.shared.validation import Violations, is_email

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$")
MIN_PASSWORD_LENGTH = 12
# argon2 work is bounded by what it is given: longer passwords are refused, at sign-in too.
MAX_PASSWORD_LENGTH = 1024
MAX_EMAIL_LENGTH = 320
MAX_NAME_LENGTH = 200


class TenantState(enum.IntEnum):
    ACTIVE = 1
    SUSPENDED = 2


class CountingWindow(enum.IntEnum):
    UTC_DAY = 1
    TENANT_DAY = 2
    ROLLING_24H = 3


class ApiKeyState(enum.Enum):
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


ROLE_CODES: dict[Role, int] = {Role.OWNER: 1, Role.ADMIN: 2, Role.ANALYST: 3, Role.VIEWER: 4}
ROLES_BY_CODE = {code: role for role, code in ROLE_CODES.items()}


@dataclass(frozen=True)
class TenantSettings:
    time_zone: str = "UTC"
    counting_window: CountingWindow = CountingWindow.UTC_DAY
    attribution_window_days: int = 30


@dataclass(frozen=True)
class Quota:
    max_users: int = 0
    max_api_keys: int = 0
    monthly_events: int = 0
    api_key_requests_per_second: int = 0


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    slug: str
    display_name: str
    state: TenantState = TenantState.ACTIVE
    settings: TenantSettings = field(default_factory=TenantSettings)
    quota: Quota = field(default_factory=Quota)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    display_name: str
    role: Role
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_login_at: datetime | None = None


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    display_name: str
    scopes: frozenset[Scope]
    prefix: str = ""
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    expires_at: datetime | None = None

    def state(self, now: datetime) -> ApiKeyState:
        if self.revoked_at is not None:
            return ApiKeyState.REVOKED
        if self.expires_at is not None and self.expires_at <= now:
            return ApiKeyState.EXPIRED
        return ApiKeyState.ACTIVE


@dataclass(frozen=True)
class AuditEvent:
    id: uuid.UUID
    occurred_at: datetime
    actor_type: str
    actor_id: str
    method: str
    resource_type: str
    resource_id: str
    request_id: str
    details: dict[str, str]


def utcnow() -> datetime:
    return datetime.now(UTC)


def normalise_email(email: str) -> str:
    return email.strip().lower()


def check_display_name(v: Violations, value: str, field_name: str, *, required: bool) -> None:
    if required:
        v.check(bool(value.strip()), field_name, "is required")
    v.check(
        len(value) <= MAX_NAME_LENGTH, field_name, f"must be at most {MAX_NAME_LENGTH} characters"
    )


def check_settings(v: Violations, settings: TenantSettings, prefix: str) -> None:
    v.check(
        is_time_zone(settings.time_zone),
        f"{prefix}.time_zone",
        "must be an IANA time zone name such as 'Europe/Berlin'",
    )
    v.check(
        1 <= settings.attribution_window_days <= 90,
        f"{prefix}.attribution_window_days",
        "must be between 1 and 90",
    )


def check_quota(v: Violations, quota: Quota, prefix: str) -> None:
    for name in ("max_users", "max_api_keys", "monthly_events", "api_key_requests_per_second"):
        v.check(getattr(quota, name) >= 0, f"{prefix}.{name}", "must not be negative")


def validate_new_tenant(tenant: Tenant, key_name: str) -> None:
    v = Violations()
    v.check(
        bool(SLUG_RE.fullmatch(tenant.slug)),
        "tenant.slug",
        "must be 3-40 lowercase letters, digits or hyphens, not starting or ending with a hyphen",
    )
    check_display_name(v, tenant.display_name, "tenant.display_name", required=True)
    check_settings(v, tenant.settings, "tenant.settings")
    check_quota(v, tenant.quota, "tenant.quota")
    check_display_name(v, key_name, "api_key_display_name", required=False)
    v.raise_if_any()


def validate_new_user(email: str, display_name: str, role: Role | None, password: str) -> None:
    v = Violations()
    v.check(is_email(email), "user.email", "must be an e-mail address")
    check_display_name(v, display_name, "user.display_name", required=False)
    v.check(role is not None, "user.role", "is required")
    check_new_password(v, password, "password")
    v.raise_if_any()


def check_new_password(v: Violations, password: str, field_name: str) -> None:
    """A password is kept exactly as typed, but whitespace around it does not count
    towards its length: padding must not make a short (or empty) password long enough."""
    if not password.strip():
        v.add(field_name, "must not be empty or only whitespace")
        return
    v.check(
        len(password.strip()) >= MIN_PASSWORD_LENGTH,
        field_name,
        f"must be at least {MIN_PASSWORD_LENGTH} characters, not counting surrounding whitespace",
    )
    v.check(
        len(password) <= MAX_PASSWORD_LENGTH,
        field_name,
        f"must be at most {MAX_PASSWORD_LENGTH} characters",
    )


def validate_sign_in(email: str, password: str) -> None:
    """Bounds on what a sign-in may ask to be checked, before any hashing work."""
    v = Violations()
    v.check(
        len(email) <= MAX_EMAIL_LENGTH, "email", f"must be at most {MAX_EMAIL_LENGTH} characters"
    )
    v.check(
        len(password) <= MAX_PASSWORD_LENGTH,
        "password",
        f"must be at most {MAX_PASSWORD_LENGTH} characters",
    )
    v.raise_if_any()


def validate_new_api_key(
    display_name: str, scopes: Iterable[Scope | None], now: datetime, expires_at: datetime | None
) -> frozenset[Scope]:
    v = Violations()
    check_display_name(v, display_name, "api_key.display_name", required=True)
    scope_list = list(scopes)
    v.check(bool(scope_list), "api_key.scopes", "name at least one scope")
    v.check(None not in scope_list, "api_key.scopes", "contains an unknown scope")
    if expires_at is not None:
        v.check(expires_at > now, "api_key.expire_time", "must be in the future")
    v.raise_if_any()
    return frozenset(s for s in scope_list if s is not None)


def require_no_escalation(principal: Principal, granted: frozenset[Permission], what: str) -> None:
    """A caller can never hand out more than it holds."""
    missing = granted - principal.permissions
    if missing:
        raise PermissionDenied(
            f"cannot grant {what}: the caller lacks {', '.join(sorted(p.value for p in missing))}",
            reason="PRIVILEGE_ESCALATION",
        )


def require_role_grant(principal: Principal, role: Role) -> None:
    require_no_escalation(principal, ROLE_PERMISSIONS[role], f"role {role.value}")


def require_scope_grant(principal: Principal, scopes: frozenset[Scope]) -> None:
    granted: frozenset[Permission] = frozenset()
    for scope in scopes:
        granted |= SCOPE_PERMISSIONS[scope]
    require_no_escalation(principal, granted, "these scopes")


def require_owner_change_allowed(principal: Principal, target: User) -> None:
    if target.role is Role.OWNER and not principal.can(Permission.OWNERS_MANAGE):
        raise PermissionDenied(
            "only owners can change or remove an owner", reason="OWNER_PROTECTED"
        )


def require_keeps_an_owner(owner_count: int, target: User, new_role: Role | None) -> None:
    if target.role is Role.OWNER and new_role is not Role.OWNER and owner_count <= 1:
        raise FailedPrecondition("a tenant must keep at least one owner", reason="LAST_OWNER")


def require_owner_key_revocation_allowed(
    principal: Principal, key: ApiKey, owner_credentials: int, now: datetime
) -> None:
    """Only owners revoke owner keys, and never the tenant's last owner credential
    (owner users and active owner keys): nobody could manage owners after it."""
    if Scope.OWNER not in key.scopes:
        return
    if not principal.can(Permission.OWNERS_MANAGE):
        raise PermissionDenied("only owners can revoke an owner key", reason="OWNER_PROTECTED")
    if key.state(now) is ApiKeyState.ACTIVE and owner_credentials <= 1:
        raise FailedPrecondition(
            "this is the tenant's last owner credential: add an owner user or owner key first",
            reason="LAST_OWNER_CREDENTIAL",
        )


def tenant_scope(principal: Principal, tenant_id: uuid.UUID) -> uuid.UUID:
    """The tenant a request may act on: its own, or any for the platform administrator.

    Another tenant's id answers NOT_FOUND, so ids of other tenants cannot be probed.
    """
    if principal.is_platform_admin or principal.tenant_id == tenant_id:
        return tenant_id
    raise NotFound("tenant", str(tenant_id))


def apply_tenant_update(current: Tenant, patch: Tenant, paths: set[str]) -> Tenant:
    settings, quota = current.settings, current.quota
    for path in paths:
        section, _, name = path.partition(".")
        if section == "display_name":
            current = replace(current, display_name=patch.display_name)
        elif section == "settings" and name:
            settings = replace(settings, **{name: getattr(patch.settings, name)})
        elif section == "settings":
            settings = patch.settings
        elif section == "quota" and name:
            quota = replace(quota, **{name: getattr(patch.quota, name)})
        elif section == "quota":
            quota = patch.quota
    updated = replace(current, settings=settings, quota=quota)
    v = Violations()
    check_display_name(v, updated.display_name, "tenant.display_name", required=True)
    check_settings(v, updated.settings, "tenant.settings")
    check_quota(v, updated.quota, "tenant.quota")
    v.raise_if_any()
    return updated


TENANT_UPDATABLE = frozenset(
    {
        "display_name",
        "settings",
        "settings.time_zone",
        "settings.counting_window",
        "settings.attribution_window_days",
        "quota",
        "quota.max_users",
        "quota.max_api_keys",
        "quota.monthly_events",
        "quota.api_key_requests_per_second",
    }
)
USER_UPDATABLE = frozenset({"display_name", "role"})
