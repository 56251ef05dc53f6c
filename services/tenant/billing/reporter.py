"""The usage reporter: records and reports every subscribed tenant's usage at start
(finishing whatever a crash left unreported) and then every interval."""

from __future__ import annotations

import asyncio
import logging

from services.shared.errors import Unavailable
from services.tenant.billing.service import Billing

log = logging.getLogger("podmesh.tenant.billing")


class UsageReporter:
    def __init__(self, billing: Billing, interval_s: float) -> None:
        self._billing = billing
        self._interval_s = interval_s
        # Held here because the event loop keeps only a weak reference to tasks.
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                recorded, reported = await self._billing.report_usage()
                if recorded or reported:
                    log.info(
                        "usage reported",
                        extra={"fields": {"recorded": recorded, "reported": reported}},
                    )
            except Unavailable as error:
                log.warning("usage reporting incomplete (%s); trying again next round", error)
            except Exception:
                log.exception("usage reporting failed; trying again next round")
            await asyncio.sleep(self._interval_s)
