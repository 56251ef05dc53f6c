"""Admission of imports, and their CPU work away from the event loop."""

from __future__ import annotations

import os
import uuid

import pytest

from services.catalog.feeds import parse_feed
from services.catalog.imports import ImportGate, Offload, Offloader
from services.shared.errors import InvalidArgument, ResourceExhausted, Unavailable
from tests.catalog.support import generated_feed


def refusal(gate: ImportGate, tenant_id: uuid.UUID) -> str:
    with pytest.raises(ResourceExhausted) as raised, gate.admit(tenant_id):
        pass
    return raised.value.reason


def test_gate_admits_per_tenant_and_in_all() -> None:
    gate = ImportGate(per_tenant=1, total=2)
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with gate.admit(first):
        assert refusal(gate, first) == "IMPORT_IN_PROGRESS"
        with gate.admit(second):
            assert refusal(gate, third) == "IMPORTS_BUSY"
            assert refusal(gate, second) == "IMPORT_IN_PROGRESS"
        with gate.admit(third):
            pass
    # A refused or failed import gives nothing back it did not take.
    with pytest.raises(RuntimeError), gate.admit(first):
        raise RuntimeError("import failed")
    with gate.admit(first), gate.admit(second):
        pass


@pytest.mark.parametrize("mode", ["process", "thread"])
async def test_offloaded_work_runs_off_the_loop_and_keeps_its_errors(mode: Offload) -> None:
    offloader = Offloader(mode, 1)
    if mode == "process":
        assert await offloader.run(os.getpid) != os.getpid()
        # Lower in priority than the process serving calls.
        assert await offloader.run(os.nice, 0) > os.nice(0)
    parsed = await offloader.run(parse_feed, generated_feed(3))
    assert [item.guid for item in parsed.items] == ["gen-0", "gen-1", "gen-2"]
    with pytest.raises(InvalidArgument) as raised:
        await offloader.run(parse_feed, b"<html><body>not a feed</body></html>")
    assert raised.value.reason == "NOT_A_FEED"
    assert [v.field for v in raised.value.violations] == ["feed"]


async def test_a_dead_worker_is_unavailable_once_then_replaced() -> None:
    offloader = Offloader("process", 1)
    with pytest.raises(Unavailable) as raised:
        await offloader.run(os._exit, 1)
    assert raised.value.reason == "FEED_WORKER_RESTARTED"
    parsed = await offloader.run(parse_feed, generated_feed(1))
    assert [item.guid for item in parsed.items] == ["gen-0"]
