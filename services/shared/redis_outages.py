"""How a feature that only ever degrades without Redis lives through a Redis outage.

After a failure Redis is not asked again for a few seconds, so a dead Redis costs one
timeout, not one per call; the outage is logged when it starts and when it ends, not per
call. What the feature does meanwhile is its own choice.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import RedisError

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
RETRY_AFTER_FAILURE_S = 5.0


class RedisOutage:
    """One feature's view of Redis; `fields` name the feature in the two log lines."""

    def __init__(self, log: logging.Logger, down: str, up: str, fields: dict[str, Any]) -> None:
        self._log = log
        self._messages = (down, up)
        self._fields = fields
        self._skip_until = 0.0
        self._down = False

    def waiting(self) -> bool:
        """Whether Redis failed a moment ago and is not to be asked yet."""
        return time.monotonic() < self._skip_until

    def failed(self, error: BaseException) -> None:
        self._skip_until = time.monotonic() + RETRY_AFTER_FAILURE_S
        if not self._down:
            self._down = True
            self._log.warning(
                self._messages[0], extra={"fields": {**self._fields, "error": repr(error)}}
            )

    def answered(self) -> None:
        if self._down:
            self._down = False
            self._log.warning(self._messages[1], extra={"fields": self._fields})
