"""Each service owns its tables: no service's code names a table another service's
migrations create; it asks that service over gRPC instead (ARCHITECTURE.md 2, 6).

A migration belongs to the service its name says (0030_analytics_results.sql), or to
the one AREAS gives for an area that is not a service's name."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("tenant", "catalog", "campaign", "attribution", "analytics")
# Migration areas that are not a service's name.
AREAS = {"platform": None, "billing": "tenant"}
_CREATE = re.compile(r"\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I)
_NAMED = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+(\w+)", re.I)


def table_owners() -> dict[str, str]:
    owners: dict[str, str] = {}
    for migration in sorted((ROOT / "db" / "migrations").glob("*.sql")):
        area = migration.stem.split("_")[1]
        assert area in SERVICES or area in AREAS, f"{migration.name}: whose area is {area!r}?"
        owner = area if area in SERVICES else AREAS[area]
        for table in _CREATE.findall(migration.read_text()):
            assert owner is not None, f"{migration.name} creates {table} for no service"
            owners[table.lower()] = owner
    return owners


def test_the_migrations_create_tables_for_the_services() -> None:
    assert set(table_owners().values()) >= {"tenant", "catalog", "campaign", "analytics"}


def test_no_service_names_another_services_table() -> None:
    owners = table_owners()
    crossings = [
        f"{module.relative_to(ROOT)} names {table} ({owners[table]}'s)"
        for service in SERVICES
        for module in sorted((ROOT / "services" / service).rglob("*.py"))
        for table in {t.lower() for t in _NAMED.findall(module.read_text())}
        if owners.get(table, service) != service
    ]
    assert crossings == []
