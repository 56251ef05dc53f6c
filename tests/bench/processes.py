"""CPU time of the platform's processes, read from /proc: what each part of a measured
path costs per request or per event."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from devstack.postgres import PostgresServer
from devstack.stack import Stack


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User and system time of a process so far (all threads), with its reaped
    children's when asked."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(stack: Stack) -> float:
    """CPU time so far of the stack's PostgreSQL: the postmaster, its reaped and its
    live backends. Zero for a server someone else runs."""
    postmaster = stack.postgres.pid if isinstance(stack.postgres, PostgresServer) else None
    if postmaster is None:
        return 0.0
    total = cpu_seconds(postmaster, reaped_children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return total


def process_cpu(stack: Stack, names: Iterable[str]) -> dict[str, float]:
    """CPU seconds so far of the named processes of the stack, and of its database
    under the name "postgres"."""
    spent = {}
    for name in names:
        process = stack.process(name)
        assert process is not None
        spent[name] = cpu_seconds(process.pid)
    spent["postgres"] = postgres_cpu_seconds(stack)
    return spent


def print_cpu(
    prefix: str,
    before: dict[str, float],
    after: dict[str, float],
    count: int,
    *,
    per: str,
    unit: Literal["ms", "us"],
) -> None:
    """Prints each process's CPU per `per` (a request, an event) between two readings."""
    factor = 1_000 if unit == "ms" else 1_000_000
    for process, spent in after.items():
        cost = (spent - before[process]) / max(count, 1) * factor
        print(f"{prefix}_{process}_cpu_{unit}_per_{per}: {cost:.2f}")
