"""SQL for the tenant service. Every function runs inside a transaction the caller
opened; tenant rows are only visible inside that tenant's transaction (RLS)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from services.shared.auth import Role, Scope
from services.shared.errors import AlreadyExists, NotFound
from services.tenant.domain import (
    ROLE_CODES,
    ROLES_BY_CODE,
    ApiKey,
    AuditEvent,
    CountingWindow,
    Quota,
    Tenant,
    TenantSettings,
    TenantState,
    User,
)

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"

_TENANT_COLUMNS = """tenant_id, slug, display_name, state, time_zone, counting_window,
    attribution_window_days, max_users, max_api_keys, monthly_events,
    api_key_requests_per_second, created_at, updated_at"""
_USER_COLUMNS = "user_id, email, display_name, role, created_at, updated_at, last_login_at"
_KEY_COLUMNS = """api_key_id, display_name, scopes, prefix, created_at, last_used_at,
    revoked_at, expires_at"""


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(
        id=row["tenant_id"],
        slug=row["slug"],
        display_name=row["display_name"],
        state=TenantState(row["state"]),
        settings=TenantSettings(
            time_zone=row["time_zone"],
            counting_window=CountingWindow(row["counting_window"]),
            attribution_window_days=row["attribution_window_days"],
        ),
        quota=Quota(
            max_users=row["max_users"],
            max_api_keys=row["max_api_keys"],
            monthly_events=row["monthly_events"],
            api_key_requests_per_second=row["api_key_requests_per_second"],
        ),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _user(row: asyncpg.Record) -> User:
    return User(
        id=row["user_id"],
        email=row["email"],
        display_name=row["display_name"],
        role=ROLES_BY_CODE[row["role"]],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_login_at=row["last_login_at"],
    )


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["api_key_id"],
        display_name=row["display_name"],
        scopes=frozenset(Scope(s) for s in row["scopes"]),
        prefix=row["prefix"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
        expires_at=row["expires_at"],
    )


async def insert_tenant(conn: Conn, tenant: Tenant) -> Tenant:
    try:
        row = await conn.fetchrow(
            f"""
            INSERT INTO tenants (tenant_id, slug, display_name, state, time_zone,
                counting_window, attribution_window_days, max_users, max_api_keys,
                monthly_events, api_key_requests_per_second)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            RETURNING {_TENANT_COLUMNS}
            """,
            tenant.id,
            tenant.slug,
            tenant.display_name,
            int(tenant.state),
            tenant.settings.time_zone,
            int(tenant.settings.counting_window),
            tenant.settings.attribution_window_days,
            tenant.quota.max_users,
            tenant.quota.max_api_keys,
            tenant.quota.monthly_events,
            tenant.quota.api_key_requests_per_second,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(
            f"the slug {tenant.slug!r} is taken",
            reason="TENANT_SLUG_TAKEN",
            metadata={"field": "tenant.slug"},
        ) from None
    assert row is not None
    return _tenant(row)


async def get_tenant(conn: Conn, tenant_id: uuid.UUID) -> Tenant | None:
    row = await conn.fetchrow(
        f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE tenant_id = $1", tenant_id
    )
    return _tenant(row) if row else None


async def update_tenant(conn: Conn, tenant: Tenant) -> Tenant:
    row = await conn.fetchrow(
        f"""
        UPDATE tenants SET display_name = $2, time_zone = $3, counting_window = $4,
            attribution_window_days = $5, max_users = $6, max_api_keys = $7,
            monthly_events = $8, api_key_requests_per_second = $9, updated_at = now()
        WHERE tenant_id = $1
        RETURNING {_TENANT_COLUMNS}
        """,
        tenant.id,
        tenant.display_name,
        tenant.settings.time_zone,
        int(tenant.settings.counting_window),
        tenant.settings.attribution_window_days,
        tenant.quota.max_users,
        tenant.quota.max_api_keys,
        tenant.quota.monthly_events,
        tenant.quota.api_key_requests_per_second,
    )
    assert row is not None
    return _tenant(row)


async def list_tenants(
    conn: Conn, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[Tenant]:
    rows = await conn.fetch(
        "SELECT * FROM platform_list_tenants($1, $2, $3)",
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [_tenant(r) for r in rows]


async def tenant_for_slug(conn: Conn, slug: str) -> tuple[uuid.UUID, TenantState] | None:
    row = await conn.fetchrow("SELECT * FROM auth_tenant_for_slug($1)", slug)
    return (row["tenant_id"], TenantState(row["tenant_state"])) if row else None


async def insert_user(conn: Conn, tenant_id: uuid.UUID, user: User, password_hash: str) -> User:
    try:
        row = await conn.fetchrow(
            f"""
            INSERT INTO users (tenant_id, user_id, email, display_name, role, password_hash)
            VALUES ($1, $2, $3, $4, $5, $6)
            RETURNING {_USER_COLUMNS}
            """,
            tenant_id,
            user.id,
            user.email,
            user.display_name,
            ROLE_CODES[user.role],
            password_hash,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(
            f"a user with e-mail {user.email!r} exists",
            reason="USER_EMAIL_TAKEN",
            metadata={"field": "user.email"},
        ) from None
    assert row is not None
    return _user(row)


async def get_user(conn: Conn, user_id: uuid.UUID, *, for_update: bool = False) -> User | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = $1{lock}", user_id
    )
    return _user(row) if row else None


async def get_login(conn: Conn, email: str) -> tuple[User, str, int] | None:
    """The user, their password hash and their current token version."""
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS}, password_hash, token_version FROM users WHERE email = $1",
        email,
    )
    return (_user(row), row["password_hash"], row["token_version"]) if row else None


async def get_login_by_id(conn: Conn, user_id: uuid.UUID) -> tuple[User, str, int] | None:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS}, password_hash, token_version FROM users WHERE user_id = $1",
        user_id,
    )
    return (_user(row), row["password_hash"], row["token_version"]) if row else None


async def set_password(conn: Conn, user_id: uuid.UUID, password_hash: str) -> tuple[Role, int]:
    """Stores a new password hash and ends the tokens issued before; returns the user's
    role and new token version."""
    row = await conn.fetchrow(
        "UPDATE users SET password_hash = $2, token_version = token_version + 1, "
        "updated_at = now() WHERE user_id = $1 RETURNING role, token_version",
        user_id,
        password_hash,
    )
    if row is None:
        raise NotFound("user", str(user_id))
    return ROLES_BY_CODE[row["role"]], row["token_version"]


async def token_holder(conn: Conn, user_id: uuid.UUID) -> tuple[Role, int, TenantState] | None:
    """What an access token of this user must still match: role, token version, and the
    state of the tenant."""
    row = await conn.fetchrow(
        "SELECT u.role, u.token_version, t.state FROM users u JOIN tenants t USING (tenant_id) "
        "WHERE u.user_id = $1",
        user_id,
    )
    if row is None:
        return None
    return ROLES_BY_CODE[row["role"]], row["token_version"], TenantState(row["state"])


async def lock_tenant(conn: Conn, tenant_id: uuid.UUID) -> None:
    """Serialises the changes that may take a tenant's last owner away.

    Every such change takes this lock first and only then its user or key rows, so
    they queue in one order instead of deadlocking. NO KEY UPDATE leaves the foreign
    key checks of concurrent inserts (KEY SHARE) unblocked.
    """
    await conn.execute("SELECT 1 FROM tenants WHERE tenant_id = $1 FOR NO KEY UPDATE", tenant_id)


async def record_login(conn: Conn, user_id: uuid.UUID, new_hash: str | None) -> None:
    await conn.execute(
        "UPDATE users SET last_login_at = now(), password_hash = coalesce($2, password_hash) "
        "WHERE user_id = $1",
        user_id,
        new_hash,
    )


async def list_users(
    conn: Conn, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[User]:
    rows = await conn.fetch(
        f"""
        SELECT {_USER_COLUMNS} FROM users
        WHERE $1::timestamptz IS NULL OR (created_at, user_id) > ($1, $2)
        ORDER BY created_at, user_id LIMIT $3
        """,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [_user(r) for r in rows]


async def count_users(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM users"))


async def count_owners(conn: Conn) -> int:
    # Callers hold the tenant lock (lock_tenant), so the count cannot change under them.
    return int(
        await conn.fetchval("SELECT count(*) FROM users WHERE role = $1", ROLE_CODES[Role.OWNER])
    )


async def update_user(conn: Conn, user: User) -> User:
    # A new role invalidates the tokens issued for the old one.
    row = await conn.fetchrow(
        f"""
        UPDATE users SET display_name = $2, role = $3, updated_at = now(),
            token_version = token_version + (role <> $3)::integer
        WHERE user_id = $1 RETURNING {_USER_COLUMNS}
        """,
        user.id,
        user.display_name,
        ROLE_CODES[user.role],
    )
    assert row is not None
    return _user(row)


async def delete_user(conn: Conn, user_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM users WHERE user_id = $1", user_id)


async def insert_api_key(
    conn: Conn,
    tenant_id: uuid.UUID,
    key: ApiKey,
    secret_hash: bytes,
    created_by: tuple[str, str],
) -> ApiKey:
    row = await conn.fetchrow(
        f"""
        INSERT INTO api_keys (tenant_id, api_key_id, display_name, scopes, prefix,
            secret_hash, created_by_type, created_by_id, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        RETURNING {_KEY_COLUMNS}
        """,
        tenant_id,
        key.id,
        key.display_name,
        sorted(s.value for s in key.scopes),
        key.prefix,
        secret_hash,
        created_by[0],
        created_by[1],
        key.expires_at,
    )
    assert row is not None
    return _api_key(row)


async def get_api_key(
    conn: Conn, api_key_id: uuid.UUID, *, for_update: bool = False
) -> ApiKey | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE api_key_id = $1{lock}", api_key_id
    )
    return _api_key(row) if row else None


async def count_owner_credentials(conn: Conn) -> int:
    """Owner users plus active owner-scope API keys."""
    return int(
        await conn.fetchval(
            """
            SELECT (SELECT count(*) FROM users WHERE role = $1)
                + (SELECT count(*) FROM api_keys WHERE $2 = ANY (scopes)
                   AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()))
            """,
            ROLE_CODES[Role.OWNER],
            Scope.OWNER.value,
        )
    )


async def count_active_api_keys(conn: Conn) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL "
            "AND (expires_at IS NULL OR expires_at > now())"
        )
    )


async def list_api_keys(
    conn: Conn, after: tuple[datetime, uuid.UUID] | None, limit: int, show_inactive: bool
) -> list[ApiKey]:
    rows = await conn.fetch(
        f"""
        SELECT {_KEY_COLUMNS} FROM api_keys
        WHERE ($1::timestamptz IS NULL OR (created_at, api_key_id) < ($1, $2))
          AND ($4 OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())))
        ORDER BY created_at DESC, api_key_id DESC LIMIT $3
        """,
        after[0] if after else None,
        after[1] if after else None,
        limit,
        show_inactive,
    )
    return [_api_key(r) for r in rows]


async def revoke_api_key(conn: Conn, api_key_id: uuid.UUID) -> ApiKey | None:
    row = await conn.fetchrow(
        f"""
        UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
        WHERE api_key_id = $1 RETURNING {_KEY_COLUMNS}
        """,
        api_key_id,
    )
    return _api_key(row) if row else None


async def lookup_api_key(conn: Conn, secret_hash: bytes) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM auth_lookup_api_key($1)", secret_hash
    )
    return row


async def touch_api_key(conn: Conn, api_key_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE api_key_id = $1 "
        "AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        api_key_id,
    )


async def insert_audit_event(
    conn: Conn,
    tenant_id: uuid.UUID,
    actor: tuple[str, str],
    method: str,
    resource: tuple[str, str],
    request_id: str,
    details: dict[str, Any],
) -> None:
    await conn.execute(
        """
        INSERT INTO audit_events (tenant_id, event_id, actor_type, actor_id, method,
            resource_type, resource_id, request_id, details)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
        """,
        tenant_id,
        uuid.uuid4(),
        actor[0],
        actor[1],
        method,
        resource[0],
        resource[1],
        request_id,
        json.dumps(details),
    )


async def append_audit_events(conn: Conn, tenant_id: uuid.UUID, events: list[AuditEvent]) -> int:
    if not events:
        return 0
    rows = await conn.fetch(
        """
        INSERT INTO audit_events (tenant_id, event_id, occurred_at, actor_type, actor_id,
            method, resource_type, resource_id, request_id, details)
        SELECT $1, * FROM unnest($2::uuid[], $3::timestamptz[], $4::text[], $5::text[],
            $6::text[], $7::text[], $8::text[], $9::text[], $10::jsonb[])
        ON CONFLICT (tenant_id, event_id) DO NOTHING
        RETURNING event_id
        """,
        tenant_id,
        [e.id for e in events],
        [e.occurred_at for e in events],
        [e.actor_type for e in events],
        [e.actor_id for e in events],
        [e.method for e in events],
        [e.resource_type for e in events],
        [e.resource_id for e in events],
        [e.request_id for e in events],
        [json.dumps(e.details) for e in events],
    )
    return len(rows)


async def list_audit_events(
    conn: Conn, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[AuditEvent]:
    rows = await conn.fetch(
        """
        SELECT event_id, occurred_at, actor_type, actor_id, method, resource_type,
            resource_id, request_id, details
        FROM audit_events
        WHERE $1::timestamptz IS NULL OR (occurred_at, event_id) < ($1, $2)
        ORDER BY occurred_at DESC, event_id DESC LIMIT $3
        """,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [
        AuditEvent(
            id=r["event_id"],
            occurred_at=r["occurred_at"],
            actor_type=r["actor_type"],
            actor_id=r["actor_id"],
            method=r["method"],
            resource_type=r["resource_type"],
            resource_id=r["resource_id"],
            request_id=r["request_id"],
            details={k: str(v) for k, v in json.loads(r["details"]).items()},
        )
        for r in rows
    ]
