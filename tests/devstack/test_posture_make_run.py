"""`python -m devstack run` (what `make run` starts): restarts what dies, and Ctrl-C
still stops everything."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from devstack.procs import PIDS_FILE, free_ports, pid_alive
from devstack.stack import ROOT, SERVICES

STARTUP_S = 180.0


def port_env() -> dict[str, str]:
    names = [
        "PODMESH_GATEWAY_PORT", "PODMESH_ENVOY_ADMIN_PORT", "PODMESH_REFLECTION_PORT",
        "PODMESH_POSTGRES_PORT", "PODMESH_REDIS_PORT",
        *(f"PODMESH_{s.upper()}_PORT" for s in SERVICES),
        *(f"PODMESH_{s.upper()}_METRICS_PORT" for s in SERVICES),
    ]  # fmt: skip
    return dict(zip(names, map(str, free_ports(len(names))), strict=True))


async def read_until(stream: asyncio.StreamReader, text: str, seen: list[str]) -> None:
    deadline = time.monotonic() + STARTUP_S
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {text!r} in:\n" + "".join(seen[-30:])
        line = (await asyncio.wait_for(stream.readline(), remaining)).decode()
        assert line, f"the run ended before {text!r}:\n" + "".join(seen[-30:])
        seen.append(line)
        if text in line:
            return


async def test_make_run_restarts_a_killed_service_and_stops_on_ctrl_c(
    session_dir: Path,
) -> None:
    run_dir = session_dir / "make-run"
    env = {**os.environ, **port_env(), "PODMESH_DEVSTACK_LOG_LEVEL": "INFO"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devstack", "run", "--run-dir", str(run_dir),
        cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    seen: list[str] = []
    try:
        await read_until(process.stderr, "platform up", seen)
        pid = _child_pid(run_dir, "tenant")
        os.kill(pid, signal.SIGKILL)
        await read_until(process.stderr, "tenant died (killed by SIGKILL)", seen)
        await read_until(process.stderr, "tenant restarted", seen)
        new_pid = _child_pid(run_dir, "tenant")
        assert new_pid != pid
        assert pid_alive(new_pid)
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 120)
    rest = (await process.stderr.read()).decode()
    assert code == 0, "".join(seen) + rest
    assert "stopped" in rest
    assert not pid_alive(new_pid)
    assert not (run_dir / PIDS_FILE).exists() or _child_pids(run_dir) == {}


def _child_pids(run_dir: Path) -> dict[str, int]:
    data = json.loads((run_dir / PIDS_FILE).read_text())
    return {name: entry["pid"] for name, entry in data.items() if pid_alive(entry["pid"])}


def _child_pid(run_dir: Path, name: str) -> int:
    return _child_pids(run_dir)[name]
