"""The tenant service's operations: each one transaction, its rules, its audit record."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.shared.auth import (
    CredentialVerifier,
    JwtCodec,
    Principal,
    PrincipalType,
    Role,
    Scope,
    api_key_hash,
    api_key_shown_prefix,
    new_api_key_secret,
)
from services.shared.context import current_method, current_request_id, tenant_of
from services.shared.db import Database
from services.shared.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from services.shared.pagination import Keyset, PageTokens, split_page
from services.shared.validation import Violations, mask_paths
from services.tenant import repository as repo
from services.tenant.billing import repository as billing_repo
from services.tenant.billing.account import billing_warning
from services.tenant.billing.plans import PlanQuota, effective_quota
from services.tenant.domain import (
    MAX_PASSWORD_LENGTH,
    TENANT_UPDATABLE,
    USER_UPDATABLE,
    ApiKey,
    AuditEvent,
    Tenant,
    TenantState,
    User,
    apply_tenant_update,
    check_display_name,
    check_new_password,
    normalise_email,
    require_keeps_an_owner,
    require_owner_change_allowed,
    require_owner_key_revocation_allowed,
    require_role_grant,
    require_scope_grant,
    tenant_scope,
    utcnow,
    validate_new_api_key,
    validate_new_tenant,
    validate_new_user,
    validate_sign_in,
)
from services.tenant.login_guard import LoginGuard, TooManyAttempts

log = logging.getLogger("podmesh.tenant")

_hasher = PasswordHasher()
# Verified when the e-mail is unknown, so a sign-in takes as long either way.
_DUMMY_HASH = _hasher.hash("podmesh-timing-equaliser")
_LOGIN_FAILED = "the tenant, e-mail or password is wrong"


class TenantDirectory:
    def __init__(
        self,
        db: Database,
        jwt: JwtCodec,
        page_tokens: PageTokens,
        guard: LoginGuard,
        billing_grace: timedelta,
    ) -> None:
        self._db = db
        self._jwt = jwt
        self._tokens = page_tokens
        self._guard = guard
        self._billing_grace = billing_grace

    # Tenants

    async def create_tenant(
        self, principal: Principal, tenant: Tenant, key_name: str
    ) -> tuple[Tenant, ApiKey, str]:
        key_name = key_name or "Owner key"
        validate_new_tenant(tenant, key_name)
        tenant = replace(tenant, id=uuid.uuid4(), state=TenantState.ACTIVE)
        secret = new_api_key_secret()
        key = ApiKey(
            id=uuid.uuid4(),
            display_name=key_name,
            scopes=frozenset({Scope.OWNER}),
            prefix=api_key_shown_prefix(secret),
        )
        # Creating the tenant's rows inside its own tenant transaction lets RLS
        # check them like any other write; no bypass is needed.
        async with self._db.tenant_transaction(tenant.id) as conn:
            created = await repo.insert_tenant(conn, tenant)
            stored_key = await repo.insert_api_key(
                conn, tenant.id, key, api_key_hash(secret), _actor(principal)
            )
            await _audit(
                conn,
                tenant.id,
                principal,
                ("tenant", str(tenant.id)),
                {"slug": tenant.slug, "api_key_id": str(key.id)},
            )
        return created, stored_key, secret

    async def get_tenant(self, principal: Principal, tenant_id: uuid.UUID) -> Tenant:
        tenant_id = tenant_scope(principal, tenant_id)
        async with self._db.tenant_transaction(tenant_id) as conn:
            tenant = await repo.get_tenant(conn, tenant_id)
        if tenant is None:
            raise NotFound("tenant", str(tenant_id))
        return tenant

    async def list_tenants(self, page_size: int, page_token: str) -> tuple[list[Tenant], str]:
        keyset = Keyset(self._tokens, {"list": "tenants"})
        async with self._db.platform_transaction() as conn:
            rows = await repo.list_tenants(conn, keyset.after(page_token), page_size + 1)
        page, more = split_page(rows, page_size)
        last = (page[-1].created_at, page[-1].id) if more and page[-1].created_at else None
        return list(page), keyset.next_token(last)

    async def update_tenant(
        self, principal: Principal, patch: Tenant, paths: Sequence[str]
    ) -> Tenant:
        tenant_id = tenant_scope(principal, patch.id)
        requested = mask_paths(paths, TENANT_UPDATABLE)
        if any(p.startswith("quota") for p in requested) and not principal.is_platform_admin:
            raise PermissionDenied(
                "quotas are set by the platform administrator", reason="QUOTA_READ_ONLY"
            )
        async with self._db.tenant_transaction(tenant_id) as conn:
            current = await repo.get_tenant(conn, tenant_id)
            if current is None:
                raise NotFound("tenant", str(tenant_id))
            updated = await repo.update_tenant(conn, apply_tenant_update(current, patch, requested))
            await _audit(
                conn,
                tenant_id,
                principal,
                ("tenant", str(tenant_id)),
                {"update_mask": ",".join(sorted(requested))},
            )
        return updated

    # Users

    async def create_user(
        self,
        principal: Principal,
        email: str,
        display_name: str,
        role: Role | None,
        password: str,
    ) -> User:
        tenant_id = tenant_of(principal)
        email = normalise_email(email)
        validate_new_user(email, display_name, role, password)
        assert role is not None
        require_role_grant(principal, role)
        password_hash = await asyncio.to_thread(_hasher.hash, password)
        user = User(id=uuid.uuid4(), email=email, display_name=display_name.strip(), role=role)
        async with self._db.tenant_transaction(tenant_id) as conn:
            tenant = await _tenant_or_fail(conn, tenant_id)
            limit = (await _quota_in_force(conn, tenant)).max_users
            if await repo.count_users(conn) >= limit:
                raise ResourceExhausted(
                    f"the tenant has reached its quota of {limit} users",
                    reason="USER_QUOTA_EXCEEDED",
                    metadata={"limit": str(limit)},
                )
            created = await repo.insert_user(conn, tenant_id, user, password_hash)
            await _audit(
                conn,
                tenant_id,
                principal,
                ("user", str(user.id)),
                {"email": email, "role": role.value},
            )
        return created

    async def get_user(self, principal: Principal, user_id: uuid.UUID) -> User:
        async with self._db.tenant_transaction(tenant_of(principal)) as conn:
            user = await repo.get_user(conn, user_id)
        if user is None:
            raise NotFound("user", str(user_id))
        return user

    async def list_users(
        self, principal: Principal, page_size: int, page_token: str
    ) -> tuple[list[User], str]:
        keyset = Keyset(self._tokens, {"list": "users"})
        async with self._db.tenant_transaction(tenant_of(principal)) as conn:
            rows = await repo.list_users(conn, keyset.after(page_token), page_size + 1)
        page, more = split_page(rows, page_size)
        last = (page[-1].created_at, page[-1].id) if more and page[-1].created_at else None
        return list(page), keyset.next_token(last)

    async def update_user(
        self, principal: Principal, patch: User, paths: Sequence[str], role: Role | None
    ) -> User:
        tenant_id = tenant_of(principal)
        requested = mask_paths(paths, USER_UPDATABLE)
        if "role" in requested and role is None:
            raise InvalidArgument.field("user.role", "is required when the mask names it")

        async def work(conn: asyncpg.Connection) -> User:
            await repo.lock_tenant(conn, tenant_id)
            current = await repo.get_user(conn, patch.id, for_update=True)
            if current is None:
                raise NotFound("user", str(patch.id))
            require_owner_change_allowed(principal, current)
            updated = current
            if "display_name" in requested:
                updated = replace(updated, display_name=patch.display_name.strip())
            if "role" in requested and role is not None:
                require_role_grant(principal, role)
                require_keeps_an_owner(await repo.count_owners(conn), current, role)
                updated = replace(updated, role=role)
            saved = await repo.update_user(conn, updated)
            await _audit(
                conn,
                tenant_id,
                principal,
                ("user", str(current.id)),
                {"update_mask": ",".join(sorted(requested)), "role": saved.role.value},
            )
            return saved

        return await self._db.in_tenant_transaction(tenant_id, work)

    async def delete_user(self, principal: Principal, user_id: uuid.UUID) -> None:
        tenant_id = tenant_of(principal)

        async def work(conn: asyncpg.Connection) -> None:
            await repo.lock_tenant(conn, tenant_id)
            current = await repo.get_user(conn, user_id, for_update=True)
            if current is None:
                raise NotFound("user", str(user_id))
            require_owner_change_allowed(principal, current)
            require_keeps_an_owner(await repo.count_owners(conn), current, None)
            await repo.delete_user(conn, user_id)
            await _audit(
                conn, tenant_id, principal, ("user", str(user_id)), {"email": current.email}
            )

        await self._db.in_tenant_transaction(tenant_id, work)

    # Sign-in and credentials

    async def login(
        self, slug: str, email: str, password: str, client_address: str
    ) -> tuple[str, datetime, User]:
        slug, email = slug.strip().lower(), normalise_email(email)
        validate_sign_in(email, password)
        try:
            charge = await self._guard.charge(slug, email, client_address)
        except TooManyAttempts as held:
            raise _throttled(held, slug, client_address) from None
        async with self._db.platform_transaction() as conn:
            found = await repo.tenant_for_slug(conn, slug)
        login = None
        if found is not None and found[1] is TenantState.ACTIVE:
            async with self._db.tenant_transaction(found[0]) as conn:
                login = await repo.get_login(conn, email)
        stored_hash = login[1] if login else _DUMMY_HASH
        valid = await asyncio.to_thread(_verify_password, stored_hash, password)
        if login is None or found is None or not valid:
            if found is not None:
                await self._audit_failed_login(found, login, email, client_address)
            raise Unauthenticated(_LOGIN_FAILED, reason="LOGIN_FAILED")
        await self._guard.refund(charge)
        user, _, token_version = login
        rehash = (
            await asyncio.to_thread(_hasher.hash, password)
            if _hasher.check_needs_rehash(stored_hash)
            else None
        )
        async with self._db.tenant_transaction(found[0]) as conn:
            await repo.record_login(conn, user.id, rehash)
        token, expires = self._jwt.issue(found[0], user.id, user.role, token_version)
        return token, expires, user

    async def change_password(
        self,
        principal: Principal,
        user_id: uuid.UUID,
        current_password: str,
        new_password: str,
        client_address: str,
    ) -> tuple[str, datetime]:
        """Replaces the caller's own password and returns a token for the new version.

        Checking the current password is throttled with the same account counter as
        Login, so a stolen token does not open a way to guess it.
        """
        if principal.type is not PrincipalType.USER or principal.subject_id != str(user_id):
            raise PermissionDenied(
                "users change only their own password, signed in as themselves",
                reason="OWN_PASSWORD_ONLY",
            )
        tenant_id = tenant_of(principal)
        v = Violations()
        v.check(
            len(current_password) <= MAX_PASSWORD_LENGTH,
            "current_password",
            f"must be at most {MAX_PASSWORD_LENGTH} characters",
        )
        check_new_password(v, new_password, "new_password")
        v.raise_if_any()
        async with self._db.tenant_transaction(tenant_id) as conn:
            tenant = await _tenant_or_fail(conn, tenant_id)
            login = await repo.get_login_by_id(conn, user_id)
        if login is None:
            raise NotFound("user", str(user_id))
        user, stored_hash, _ = login
        try:
            charge = await self._guard.charge(tenant.slug, user.email, client_address)
        except TooManyAttempts as held:
            raise _throttled(held, tenant.slug, client_address) from None
        if not await asyncio.to_thread(_verify_password, stored_hash, current_password):
            async with self._db.tenant_transaction(tenant_id) as conn:
                await _audit(
                    conn,
                    tenant_id,
                    principal,
                    ("user", str(user_id)),
                    {"reason": "WRONG_PASSWORD", "client_address": client_address},
                )
            raise InvalidArgument.field(
                "current_password", "is not the current password", reason="WRONG_PASSWORD"
            )
        await self._guard.refund(charge)
        new_hash = await asyncio.to_thread(_hasher.hash, new_password)
        async with self._db.tenant_transaction(tenant_id) as conn:
            role, token_version = await repo.set_password(conn, user_id, new_hash)
            await _audit(
                conn,
                tenant_id,
                principal,
                ("user", str(user_id)),
                {"client_address": client_address},
            )
        return self._jwt.issue(tenant_id, user_id, role, token_version)

    async def _audit_failed_login(
        self,
        tenant: tuple[uuid.UUID, TenantState],
        login: tuple[User, str, int] | None,
        email: str,
        client_address: str,
    ) -> None:
        """Records a failed sign-in in the tenant's audit log (never the password tried)."""
        if tenant[1] is not TenantState.ACTIVE:
            reason = "TENANT_SUSPENDED"
        elif login is None:
            reason = "UNKNOWN_USER"
        else:
            reason = "WRONG_PASSWORD"
        async with self._db.tenant_transaction(tenant[0]) as conn:
            await repo.insert_audit_event(
                conn,
                tenant[0],
                ("anonymous", ""),
                current_method(),
                ("user", str(login[0].id) if login else ""),
                current_request_id(),
                {"email": email, "reason": reason, "client_address": client_address},
            )

    async def verify_api_key(self, secret: str) -> Principal | None:
        async with self._db.platform_transaction() as conn:
            row = await repo.lookup_api_key(conn, api_key_hash(secret))
        if row is None or row["revoked_at"] is not None:
            return None
        now = utcnow()
        if row["expires_at"] is not None and row["expires_at"] <= now:
            return None
        if TenantState(row["tenant_state"]) is not TenantState.ACTIVE:
            return None
        async with self._db.tenant_transaction(row["tenant_id"]) as conn:
            await repo.touch_api_key(conn, row["api_key_id"])
            account = await billing_repo.get_account(conn, row["tenant_id"])
        return Principal(
            type=PrincipalType.API_KEY,
            tenant_id=row["tenant_id"],
            subject_id=str(row["api_key_id"]),
            scopes=frozenset(Scope(s) for s in row["scopes"]),
            expires_at=row["expires_at"],
            billing_warning=billing_warning(account, now, self._billing_grace),
        )

    async def verify_user_token(self, token: str, claims: Principal) -> Principal | None:
        """The claims, if their user still exists with the same role and token version
        in an active tenant. Checked on every use: the tenant service keeps no cache."""
        if claims.tenant_id is None:
            return None
        async with self._db.tenant_transaction(claims.tenant_id) as conn:
            holder = await repo.token_holder(conn, uuid.UUID(claims.subject_id))
            account = await billing_repo.get_account(conn, claims.tenant_id)
        if holder is None:
            return None
        role, token_version, tenant_state = holder
        if (
            role is not claims.role
            or token_version != claims.token_version
            or tenant_state is not TenantState.ACTIVE
        ):
            return None
        return replace(
            claims, billing_warning=billing_warning(account, utcnow(), self._billing_grace)
        )

    async def introspect(self, verifier: CredentialVerifier, credential: str) -> Principal | None:
        return await verifier.verify(credential.strip())

    # API keys

    async def create_api_key(
        self,
        principal: Principal,
        display_name: str,
        scopes: Sequence[Scope | None],
        expires_at: datetime | None,
    ) -> tuple[ApiKey, str]:
        tenant_id = tenant_of(principal)
        granted = validate_new_api_key(display_name, scopes, utcnow(), expires_at)
        require_scope_grant(principal, granted)
        secret = new_api_key_secret()
        key = ApiKey(
            id=uuid.uuid4(),
            display_name=display_name.strip(),
            scopes=granted,
            prefix=api_key_shown_prefix(secret),
            expires_at=expires_at,
        )
        async with self._db.tenant_transaction(tenant_id) as conn:
            tenant = await _tenant_or_fail(conn, tenant_id)
            limit = (await _quota_in_force(conn, tenant)).max_api_keys
            if await repo.count_active_api_keys(conn) >= limit:
                raise ResourceExhausted(
                    f"the tenant has reached its quota of {limit} active API keys; "
                    "revoke one first",
                    reason="API_KEY_QUOTA_EXCEEDED",
                    metadata={"limit": str(limit)},
                )
            stored = await repo.insert_api_key(
                conn, tenant_id, key, api_key_hash(secret), _actor(principal)
            )
            await _audit(
                conn,
                tenant_id,
                principal,
                ("api_key", str(key.id)),
                {"scopes": ",".join(sorted(s.value for s in granted))},
            )
        return stored, secret

    async def get_api_key(self, principal: Principal, api_key_id: uuid.UUID) -> ApiKey:
        async with self._db.tenant_transaction(tenant_of(principal)) as conn:
            key = await repo.get_api_key(conn, api_key_id)
        if key is None:
            raise NotFound("api key", str(api_key_id))
        return key

    async def list_api_keys(
        self, principal: Principal, page_size: int, page_token: str, show_inactive: bool
    ) -> tuple[list[ApiKey], str]:
        keyset = Keyset(self._tokens, {"list": "api_keys", "inactive": show_inactive})
        async with self._db.tenant_transaction(tenant_of(principal)) as conn:
            rows = await repo.list_api_keys(
                conn, keyset.after(page_token), page_size + 1, show_inactive
            )
        page, more = split_page(rows, page_size)
        last = (page[-1].created_at, page[-1].id) if more and page[-1].created_at else None
        return list(page), keyset.next_token(last)

    async def revoke_api_key(self, principal: Principal, api_key_id: uuid.UUID) -> ApiKey:
        tenant_id = tenant_of(principal)

        async def work(conn: asyncpg.Connection) -> ApiKey:
            await repo.lock_tenant(conn, tenant_id)
            current = await repo.get_api_key(conn, api_key_id, for_update=True)
            if current is None:
                raise NotFound("api key", str(api_key_id))
            if Scope.OWNER in current.scopes:
                require_owner_key_revocation_allowed(
                    principal, current, await repo.count_owner_credentials(conn), utcnow()
                )
            key = await repo.revoke_api_key(conn, api_key_id)
            assert key is not None
            await _audit(conn, tenant_id, principal, ("api_key", str(api_key_id)), {})
            return key

        return await self._db.in_tenant_transaction(tenant_id, work)

    async def issue_owner_api_key(
        self, principal: Principal, tenant_id: uuid.UUID, key_name: str
    ) -> tuple[ApiKey, str]:
        """A new owner key for a tenant, by the platform administrator: the way back
        for a tenant whose owners lost every owner credential. Not counted against the
        tenant's key quota, so recovery always works."""
        tenant_id = tenant_scope(principal, tenant_id)
        key_name = key_name.strip() or "Owner key"
        v = Violations()
        check_display_name(v, key_name, "api_key_display_name", required=True)
        v.raise_if_any()
        secret = new_api_key_secret()
        key = ApiKey(
            id=uuid.uuid4(),
            display_name=key_name,
            scopes=frozenset({Scope.OWNER}),
            prefix=api_key_shown_prefix(secret),
        )
        async with self._db.tenant_transaction(tenant_id) as conn:
            await _tenant_or_fail(conn, tenant_id)
            stored = await repo.insert_api_key(
                conn, tenant_id, key, api_key_hash(secret), _actor(principal)
            )
            await _audit(
                conn,
                tenant_id,
                principal,
                ("api_key", str(key.id)),
                {"scopes": Scope.OWNER.value},
            )
        return stored, secret

    # Audit

    async def append_audit_events(self, tenant_id: uuid.UUID, events: list[AuditEvent]) -> int:
        """Other services' records, each once by id; how many were new."""
        async with self._db.tenant_transaction(tenant_id) as conn:
            await _tenant_or_fail(conn, tenant_id)
            return await repo.append_audit_events(conn, tenant_id, events)

    async def list_audit_events(
        self, principal: Principal, page_size: int, page_token: str
    ) -> tuple[list[AuditEvent], str]:
        keyset = Keyset(self._tokens, {"list": "audit_events"})
        async with self._db.tenant_transaction(tenant_of(principal)) as conn:
            rows = await repo.list_audit_events(conn, keyset.after(page_token), page_size + 1)
        page, more = split_page(rows, page_size)
        last = (page[-1].occurred_at, page[-1].id) if more else None
        return list(page), keyset.next_token(last)


def _throttled(held: TooManyAttempts, slug: str, client_address: str) -> ResourceExhausted:
    # Logged, not audited: refused attempts cost nothing, so auditing each one would let
    # anyone fill a tenant's audit log.
    log.info(
        "sign-in held back", extra={"fields": {"client_address": client_address, "slug": slug}}
    )
    return ResourceExhausted(
        "too many failed sign-ins; wait before trying again",
        reason="LOGIN_THROTTLED",
        metadata={"retry_after_s": str(math.ceil(held.retry_after_s))},
        retry_delay_s=held.retry_after_s,
    )


def _verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _actor(principal: Principal) -> tuple[str, str]:
    return principal.type.value, principal.subject_id


async def _tenant_or_fail(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> Tenant:
    tenant = await repo.get_tenant(conn, tenant_id)
    if tenant is None:
        raise NotFound("tenant", str(tenant_id))
    return tenant


async def _quota_in_force(conn: asyncpg.Connection, tenant: Tenant) -> PlanQuota:
    account = await billing_repo.get_account(conn, tenant.id)
    return effective_quota(account.plan, tenant.quota)


async def _audit(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    principal: Principal,
    resource: tuple[str, str],
    details: dict[str, Any],
) -> None:
    await repo.insert_audit_event(
        conn,
        tenant_id,
        _actor(principal),
        current_method(),
        resource,
        current_request_id(),
        details,
    )
