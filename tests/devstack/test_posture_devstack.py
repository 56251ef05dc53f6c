"""Supervision and replicas in the devstack, without a running platform."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from devstack.procs import StackError, spawn
from devstack.stack import PortPlan, parse_replicas
from devstack.supervise import CRASH_LOOP_AFTER, Supervisor, Watched, backoff, describe_exit


def test_replicas_are_parsed_and_checked() -> None:
    assert parse_replicas("") == {}
    assert parse_replicas("analytics=2, catalog=3") == {"analytics": 2, "catalog": 3}
    for bad in ("analytics", "billing=2", "analytics=0", "analytics=many", "analytics=99"):
        with pytest.raises(StackError):
            parse_replicas(bad)


def test_replicas_get_their_own_ports() -> None:
    plan = PortPlan.defaults({"PODMESH_REPLICAS": "analytics=3"})
    assert [plan.grpc_port("analytics", n) for n in (1, 2, 3)] == [50055, 50155, 50255]
    assert plan.metrics_port("analytics", 2) == 9205
    assert plan.replica_count("catalog") == 1
    free = PortPlan.free({"catalog": 2})
    ports = list(free.labelled().values())
    assert len(ports) == len(set(ports)) == len(PortPlan.free().labelled()) + 2


def test_exit_statuses_read_as_an_operator_would() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"
    assert "unknown" in describe_exit(None)
    assert [backoff(n) for n in (1, 2, 3)] == [0.2, 0.4, 0.8]
    assert backoff(50) == 30.0


async def test_a_crash_loop_backs_off_and_says_so(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.WARNING, logger="devstack.supervise")
    argv = [sys.executable, "-c", "raise SystemExit(3)"]
    proc = spawn(argv, log_path=tmp_path / "crasher.log")
    looping = asyncio.Event()

    def ended() -> tuple[int | None] | None:
        code = proc.poll()
        return (code,) if code is not None else None

    async def restart() -> None:
        nonlocal proc
        proc = spawn(argv, log_path=tmp_path / "crasher.log")
        if part.crash_streak > CRASH_LOOP_AFTER:
            looping.set()

    part = Watched("crasher", ended, restart)
    supervisor = Supervisor([part])
    supervisor.start()
    try:
        await looping.wait()
    finally:
        await supervisor.stop()
        proc.wait()
    messages = [r.getMessage() for r in caplog.records]
    assert any("crasher died (exit code 3)" in m for m in messages)
    assert any("crasher crashed 3 times in a row; backing off" in m for m in messages)
    assert part.restarts >= CRASH_LOOP_AFTER
