"""Session-wide fixtures: one whole platform per test session, started on first use.

Tests that request `stack` (directly or through another fixture) are marked
`stack`, so `pytest -m "not stack"` runs only what needs no running platform.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType

import asyncpg
import pytest
import pytest_asyncio

from devstack.localstripe import LocalStripe
from devstack.stack import ROOT, TEST_DIR_PREFIX, PortPlan, Stack, reap_stale_test_runs

RUN_ROOT = ROOT / ".run"
# Everything this session starts lives here; removed at the end if all passed.
SESSION_DIR = RUN_ROOT / f"{TEST_DIR_PREFIX}{os.getpid()}"
TEST_CORS_ORIGIN = "https://app.podmesh.test"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # CI timeouts send SIGTERM; turned into an interrupt, pytest still tears the
    # session fixtures down and the platform stops instead of leaking processes.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = exitstatus


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_unconfigure(config: pytest.Config) -> None:
    # Runs after every fixture is torn down; logs of a failed session are kept.
    if config.stash.get(_EXIT_STATUS, 1) == 0 and not os.environ.get("PODMESH_KEEP_RUN"):
        shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    """This session's private directory under .run/ (traversable by the database user)."""
    reap_stale_test_runs(RUN_ROOT)
    SESSION_DIR.mkdir(parents=True, exist_ok=True)
    return SESSION_DIR


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def localstripe(session_dir: Path) -> AsyncIterator[LocalStripe]:
    """The Stripe stand-in the tenant service bills against, on a free loopback port."""
    async with LocalStripe(session_dir / "localstripe.log") as running:
        yield running


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack(session_dir: Path, localstripe: LocalStripe) -> AsyncIterator[Stack]:
    """The whole platform on free loopback ports, with a fast (non-durable) PostgreSQL.

    DATABASE_URL / REDIS_URL in the environment are used instead of throwaway servers.
    """
    run_dir = session_dir / "stack"
    shutil.rmtree(run_dir, ignore_errors=True)
    async with Stack(
        run_dir,
        ports=PortPlan.free(),
        fast_postgres=True,
        # One browser origin the gateway's CORS tests may call from; any other is refused.
        env={**os.environ, "PODMESH_CORS_ALLOWED_ORIGINS": TEST_CORS_ORIGIN},
        # The catalog's feed tests serve feeds from 127.0.0.1, and one never answers.
        service_env_extra={
            "PODMESH_FEED_ALLOW_PRIVATE_ADDRESSES": "true",
            "PODMESH_FEED_TIMEOUT_S": "2",
            **localstripe.service_env(),
        },
    ) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def owner_conn(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the schema owner (a superuser on the throwaway cluster)."""
    conn = await asyncpg.connect(stack.owner_dsn)
    try:
        yield conn
    finally:
        await conn.close()
