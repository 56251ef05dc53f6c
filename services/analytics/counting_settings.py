"""The tenant's own counting filters: excluded IP ranges and extra bot User-Agents.

Each change is audited by a trigger on counting_settings, in its own statement
(migration 0041_analytics_audit).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import asyncpg

from services.shared.db import Database
from services.shared.validation import Violations, mask_paths

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"

MAX_IP_RANGES = 1000
MAX_USER_AGENTS = 200
MAX_USER_AGENT_LENGTH = 200
UPDATABLE = frozenset({"excluded_ip_ranges", "excluded_user_agents"})


@dataclass(frozen=True)
class CountingSettingsPatch:
    excluded_ip_ranges: tuple[str, ...]
    excluded_user_agents: tuple[str, ...]


def normalise_ip_ranges(values: Sequence[str], v: Violations) -> tuple[str, ...]:
    """CIDR ranges in canonical form, without duplicates, in the order given."""
    if not v.check(
        len(values) <= MAX_IP_RANGES, "excluded_ip_ranges", f"at most {MAX_IP_RANGES} ranges"
    ):
        return ()
    ranges: dict[str, None] = {}
    for i, raw in enumerate(values):
        field = f"excluded_ip_ranges[{i}]"
        try:
            network = ipaddress.ip_network(raw.strip(), strict=True)
        except ValueError:
            try:
                suggestion = ipaddress.ip_network(raw.strip(), strict=False)
            except ValueError:
                v.add(field, f"{raw!r} is not a CIDR range such as 203.0.113.0/24")
            else:
                v.add(field, f"{raw!r} has host bits set: did you mean {suggestion}?")
            continue
        ranges[str(network)] = None
    return tuple(ranges)


def normalise_user_agents(values: Sequence[str], v: Violations) -> tuple[str, ...]:
    """Case-insensitive substrings, matched as typed (no patterns: nothing to backtrack)."""
    if not v.check(
        len(values) <= MAX_USER_AGENTS,
        "excluded_user_agents",
        f"at most {MAX_USER_AGENTS} substrings",
    ):
        return ()
    agents: dict[str, str] = {}
    for i, raw in enumerate(values):
        value = raw.strip()
        ok = 0 < len(value) <= MAX_USER_AGENT_LENGTH and value.isprintable()
        if v.check(
            ok,
            f"excluded_user_agents[{i}]",
            f"must be 1 to {MAX_USER_AGENT_LENGTH} printable characters",
        ):
            agents.setdefault(value.casefold(), value)
    return tuple(agents.values())


@dataclass(frozen=True)
class StoredCountingSettings:
    excluded_ip_ranges: tuple[str, ...]
    excluded_user_agents: tuple[str, ...]
    update_time: datetime | None


async def get_counting_settings(conn: Conn) -> StoredCountingSettings:
    """The tenant's settings; the defaults (nothing excluded) when never set."""
    row = await conn.fetchrow(
        """
        SELECT excluded_ip_ranges::text[] AS ranges, excluded_user_agent_patterns AS agents,
            update_time
        FROM counting_settings WHERE tenant_id = app_tenant_id()
        """
    )
    if row is None:
        return StoredCountingSettings((), (), None)
    return StoredCountingSettings(tuple(row["ranges"]), tuple(row["agents"]), row["update_time"])


async def save_counting_settings(
    conn: Conn,
    tenant_id: uuid.UUID,
    ranges: Sequence[str] | None,
    agents: Sequence[str] | None,
) -> StoredCountingSettings:
    """Sets the lists given (None keeps the stored one) in one statement, so two
    concurrent updates of different lists cannot undo each other."""
    row = await conn.fetchrow(
        """
        INSERT INTO counting_settings AS s
            (tenant_id, excluded_ip_ranges, excluded_user_agent_patterns, update_time)
        VALUES ($1, coalesce($2::text[], '{}')::cidr[], coalesce($3::text[], '{}'), now())
        ON CONFLICT (tenant_id) DO UPDATE SET
            excluded_ip_ranges = CASE WHEN $2::text[] IS NULL THEN s.excluded_ip_ranges
                ELSE EXCLUDED.excluded_ip_ranges END,
            excluded_user_agent_patterns = CASE WHEN $3::text[] IS NULL
                THEN s.excluded_user_agent_patterns
                ELSE EXCLUDED.excluded_user_agent_patterns END,
            update_time = now()
        RETURNING s.excluded_ip_ranges::text[] AS ranges,
            s.excluded_user_agent_patterns AS agents, s.update_time
        """,
        tenant_id,
        None if ranges is None else list(ranges),
        None if agents is None else list(agents),
    )
    assert row is not None
    return StoredCountingSettings(tuple(row["ranges"]), tuple(row["agents"]), row["update_time"])


class CountingSettingsStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, tenant_id: uuid.UUID) -> StoredCountingSettings:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await get_counting_settings(conn)

    async def update(
        self, tenant_id: uuid.UUID, patch: CountingSettingsPatch, paths: Sequence[str]
    ) -> StoredCountingSettings:
        requested = mask_paths(paths, UPDATABLE)
        v = Violations()
        ranges = (
            normalise_ip_ranges(patch.excluded_ip_ranges, v)
            if "excluded_ip_ranges" in requested
            else None
        )
        agents = (
            normalise_user_agents(patch.excluded_user_agents, v)
            if "excluded_user_agents" in requested
            else None
        )
        v.raise_if_any()
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await save_counting_settings(conn, tenant_id, ranges, agents)
