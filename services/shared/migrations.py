"""Applies db/migrations/*.sql in order, once each, safely from concurrent starters.

Runs as the schema owner. It also keeps the login role the services use,
`podmesh_app`, which owns nothing and cannot bypass row-level security.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "db" / "migrations"
APP_ROLE = "podmesh_app"
# Any fixed 64-bit number; every starter contends for the same lock.
_LOCK_KEY = 0x706F646D657368


async def migrate(
    owner_dsn: str, *, app_role_password: str, migrations_dir: Path = MIGRATIONS_DIR
) -> list[str]:
    """Applies pending migrations and returns the versions it applied."""
    conn = await asyncpg.connect(owner_dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await _ensure_app_role(conn, app_role_password)
            return await _apply_pending(conn, migrations_dir)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()


async def _ensure_app_role(conn: asyncpg.Connection, password: str) -> None:
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", APP_ROLE)
    verb = "ALTER" if exists else "CREATE"
    # Utility statements take no bind parameters; format() with %L quotes safely.
    statement = await conn.fetchval(
        f"SELECT format('{verb} ROLE {APP_ROLE} WITH LOGIN NOSUPERUSER NOCREATEDB "
        "NOCREATEROLE NOBYPASSRLS PASSWORD %L', $1::text)",
        password,
    )
    await conn.execute(statement)
    database = await conn.fetchval("SELECT current_database()")
    await conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {APP_ROLE}')


async def _apply_pending(conn: asyncpg.Connection, migrations_dir: Path) -> list[str]:
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version text PRIMARY KEY,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    applied = {
        row["version"]: row["checksum"]
        for row in await conn.fetch("SELECT version, checksum FROM schema_migrations")
    }
    done: list[str] = []
    for version, sql in _read_migrations(migrations_dir):
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        if version in applied:
            if applied[version] != checksum:
                raise RuntimeError(
                    f"migration {version} changed after it was applied; "
                    "migrations are forward-only: add a new one"
                )
            continue
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                version,
                checksum,
            )
        done.append(version)
    return done


def _read_migrations(migrations_dir: Path) -> list[tuple[str, str]]:
    return [(path.stem, path.read_text()) for path in sorted(migrations_dir.glob("*.sql"))]


def main() -> None:
    parser = argparse.ArgumentParser(description="Apply Podmesh database migrations.")
    parser.add_argument("--owner-dsn", default=os.environ.get("PODMESH_OWNER_DATABASE_URL"))
    parser.add_argument("--app-password", default=os.environ.get("PODMESH_APP_DB_PASSWORD"))
    args = parser.parse_args()
    if not args.owner_dsn or not args.app_password:
        parser.error("--owner-dsn and --app-password (or their environment variables) are required")
    applied = asyncio.run(migrate(args.owner_dsn, app_role_password=args.app_password))
    print("applied:", ", ".join(applied) if applied else "nothing (up to date)")


if __name__ == "__main__":
    main()
