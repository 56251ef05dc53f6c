"""A localstripe process (the Stripe stand-in the test suite bills against) on a free
loopback port.

localstripe pickles its whole store to the fixed path /tmp/localstripe.pickle after
every write; the launcher turns that off, so parallel runs never share or clobber a
store and every run starts empty.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from devstack.procs import StackError, free_ports, spawn, tail, terminate

HOST = "127.0.0.1"
_LAUNCH = (
    "import localstripe.resources as r\n"
    "r.Store.dump_to_disk = lambda self: None\n"
    "from localstripe.server import start\n"
    "start()\n"
)
# Test-mode keys: localstripe accepts any "sk_..." key, real Stripe none of these.
API_KEY = "sk_test_podmesh_localstripe"
WEBHOOK_SECRET = "whsec_podmesh_localstripe_test"


class LocalStripe:
    def __init__(self, log_path: Path) -> None:
        self.port = free_ports(1)[0]
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> None:
        proc = self._proc = spawn(
            [sys.executable, "-c", _LAUNCH, "--port", str(self.port), "--from-scratch"],
            log_path=self._log_path,
        )
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    await client.get(
                        f"{self.url}/v1/plans", headers={"Authorization": f"Bearer {API_KEY}"}
                    )
                    return
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        raise StackError(f"localstripe did not start:\n{tail(self._log_path)}")

    async def register_webhook(self, url: str) -> None:
        """Asks localstripe to sign and deliver its events to `url`."""
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{self.url}/_config/webhooks/podmesh",
                data={"url": url, "secret": WEBHOOK_SECRET},
            )
            response.raise_for_status()

    async def stop(self) -> None:
        if self._proc is not None:
            await terminate(self._proc, grace=5.0)
            self._proc = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def service_env(self) -> dict[str, str]:
        """What the tenant service needs to bill against this stand-in."""
        return {
            "PODMESH_STRIPE_API_KEY": API_KEY,
            "PODMESH_STRIPE_API_BASE": self.url,
            "PODMESH_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
