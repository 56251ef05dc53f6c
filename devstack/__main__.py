"""`python -m devstack run`: the whole platform on loopback until Ctrl-C or SIGTERM.

`python -m devstack clean` stops whatever a killed run left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

from devstack.procs import StackError, pid_alive
from devstack.redis import RedisServer
from devstack.stack import (
    CORS_ORIGINS_ENV,
    GATEWAY_BIND_ENV,
    REPLICAS_ENV,
    ROOT,
    SERVICES,
    TEST_DIR_PREFIX,
    PortPlan,
    Stack,
    reap,
    reap_stale_test_runs,
)

RUN_DIR = ROOT / ".run"
LOCK_FILE = "devstack.pid"

log = logging.getLogger("devstack")


def _other_run_pid(run_dir: Path) -> int | None:
    try:
        pid = int((run_dir / LOCK_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    if pid == os.getpid() or not pid_alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"devstack" in cmdline else None


def wipe_previous_run(run_dir: Path) -> None:
    """Stops leftovers of an earlier run, then deletes its throwaway data."""
    reap(run_dir)
    for entry in run_dir.iterdir() if run_dir.exists() else []:
        if entry.name.startswith(TEST_DIR_PREFIX) or entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def banner(stack: Stack) -> str:
    rel = os.path.relpath(stack.run_dir, Path.cwd())
    venv_bin = os.path.relpath(Path(sys.executable).parent, Path.cwd())
    if stack.secrets.admin_token_generated:
        token = f"$(cat {rel}/admin-token)"
        token_line = f"  admin token   {rel}/admin-token"
    else:
        token = "$PODMESH_ADMIN_TOKEN"
        token_line = "  admin token   $PODMESH_ADMIN_TOKEN (from your environment)"
    services = "  ".join(
        f"{n} {','.join(stack.service_addr(r).rpartition(':')[2] for r in stack.replicas(n))}"
        for n in SERVICES
    )
    return f"""
Podmesh is up.
  gateway       {stack.gateway_listen}  (gRPC over h2c, JSON under /api/v1, reflection)
                {_exposure(stack.gateway_bind)}
  CORS origins  {", ".join(stack.cors_allowed_origins) or "none"}  ({CORS_ORIGINS_ENV})
{token_line}
  services      {services}  (127.0.0.1)
  logs          {rel}/logs/
  PostgreSQL    {_redacted(stack.owner_dsn)}
  Redis         {_redacted(stack.redis_url)}{_redis_password_hint(stack, rel)}

Try:
  {venv_bin}/grpcurl -plaintext {stack.gateway_addr} list
  curl -s -H "authorization: Bearer {token}" {stack.gateway_url}/api/v1/tenants

Whatever exits is restarted (with backoff); {REPLICAS_ENV}=analytics=2,... runs replicas.
Ctrl-C (or SIGTERM) stops everything.
"""


def _redis_password_hint(stack: Stack, rel: str) -> str:
    if not isinstance(stack.redis, RedisServer):
        return ""
    return f"  (password in {rel}/{stack.redis.password_file.relative_to(stack.run_dir)})"


def _exposure(bind: str) -> str:
    if ipaddress.ip_address(bind).is_loopback:
        return f"loopback only; {GATEWAY_BIND_ENV}=0.0.0.0 would expose it"
    return f"reachable from other machines ({GATEWAY_BIND_ENV}={bind})"


def _redacted(dsn: str) -> str:
    scheme, _, rest = dsn.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        return dsn
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"


async def run(run_dir: Path) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    stack = Stack(run_dir, ports=PortPlan.defaults())
    starting = asyncio.create_task(stack.start())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        log.info("interrupted while starting: stopping what is up")
        starting.cancel()
        # start() stops whatever it had started before re-raising the cancellation.
        await asyncio.gather(starting, return_exceptions=True)
        return 130
    stopped.cancel()
    if (error := starting.exception()) is not None:
        if isinstance(error, StackError):
            log.error("%s", error)
            return 1
        raise error

    print(banner(stack), flush=True)
    # Whatever dies from now on is restarted with backoff and logged as an error.
    stack.supervise()
    await stop.wait()

    log.info("stopping")
    await stack.stop()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=("run", "clean"))
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("PODMESH_DEVSTACK_LOG_LEVEL", "INFO"),
        format="devstack: %(message)s",
        stream=sys.stderr,
    )
    # One line per health poll of Envoy's admin API is noise, not progress.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run_dir: Path = args.run_dir.absolute()

    other = _other_run_pid(run_dir)
    if other is not None:
        log.error("another `python -m devstack run` (pid %d) is using %s", other, run_dir)
        return 1
    if args.command == "clean":
        wipe_previous_run(run_dir)
        reap_stale_test_runs(run_dir)
        return 0

    run_dir.mkdir(parents=True, exist_ok=True)
    wipe_previous_run(run_dir)
    lock = run_dir / LOCK_FILE
    lock.write_text(f"{os.getpid()}\n")
    try:
        return asyncio.run(run(run_dir))
    except StackError as exc:
        log.error("%s", exc)
        return 1
    finally:
        lock.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
