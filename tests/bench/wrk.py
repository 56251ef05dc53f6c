"""Running wrk, the C load generator of the gateway benchmarks, and reading its result.

Each benchmark's Lua script ends with a `wrk_result name=value ...` line (latencies,
counts, and the failures below), so a run is refused, not reported, when anything failed.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

WRK_RESULT = re.compile(r"^wrk_result (.*)$", re.MULTILINE)
FAILURES = ("unexpected", "connect", "read", "write", "timeout")


class BenchError(Exception):
    """The run cannot give figures worth printing."""


async def run_wrk(
    script: Path, url: str, seconds: int, *, threads: int, connections: int, request_timeout: str
) -> dict[str, int]:
    """One wrk run; refuses a run with any unexpected status or socket error."""
    process = await asyncio.create_subprocess_exec(
        "wrk",
        "--threads", str(threads),
        "--connections", str(connections),
        "--duration", f"{seconds}s",
        "--timeout", request_timeout,
        "--script", str(script),
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    found = WRK_RESULT.search(out.decode())
    if process.returncode != 0 or found is None:
        raise BenchError(f"wrk exited with {process.returncode}: {(out + err).decode()[-1000:]}")
    result = {name: int(value) for name, value in (pair.split("=") for pair in found[1].split())}
    failed = {name: result[name] for name in FAILURES if result[name]}
    if failed:
        raise BenchError(
            f"{script.stem}: of {result['requests']} requests to {url}, failures {failed} "
            "(unexpected: another status than the script expects)"
        )
    return result
