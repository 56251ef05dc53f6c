"""Computed reports in Redis, reused while the tenant's attribution version is unchanged.

A report reads a campaign's exposures and its sponsor's site events, and both only
change in transactions that bump the tenant's attribution version (versions.py). An
entry stores the version it was computed at, read before the computation's own
transaction started, so a reused entry is exactly what a fresh computation would give
(at worst an entry is stored under an older version than its numbers, and then never
reused). Per period there is one entry for what all models share (reach, promo codes,
unattributed conversions) and one per model, so a single-model report reuses what a
comparison computed. Entries also expire after a TTL, which bounds memory and the age
of the lift's control group, read from analytics. Redis failing only costs speed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from services.attribution.models import Model
from services.attribution.reports.domain import Credited, Reach, Unattributed
from services.attribution.reports.report import Core, LiftResult

log = logging.getLogger("podmesh.attribution.reports")

LOOKUPS = Counter(
    "podmesh_attribution_report_cache_lookups_total",
    "Attribution report cache lookups by result",
    ["result"],
)
_PREFIX = "attribution:report:"


def period_key(tenant_id: uuid.UUID, parts: Sequence[object]) -> str:
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:32]
    # Hash-tagged by tenant, so a Redis Cluster keeps a tenant's entries on one shard.
    return f"{_PREFIX}{{{tenant_id}}}:{digest}"


def _base(core: Core) -> dict[str, Any]:
    return {
        "line_items": [str(x) for x in core.line_items],
        "podcasts": [str(x) for x in core.podcasts],
        "total": [core.total.impressions, core.total.households],
        "by_line_item": [[k, r.impressions, r.households] for k, r in core.by_line_item.items()],
        "by_podcast": [[k, r.impressions, r.households] for k, r in core.by_podcast.items()],
        "by_pair": [[li, pod, n] for (li, pod), n in core.impressions_by_pair.items()],
        "promo": core.promo_purchases,
        "unattributed": [
            core.unattributed.visitors,
            core.unattributed.leads,
            core.unattributed.purchases,
            core.unattributed.revenue_minor,
        ],
        "data_end": core.data_end.isoformat(),
        "lift": core.lift.message.hex() if core.lift.message is not None else None,
        "lift_reason": core.lift.unavailable_reason,
    }


def _pairs(credited: Credited) -> list[list[int]]:
    return [[li, pod, *slots] for (li, pod), slots in credited.pairs.items()]


def _core(base: dict[str, Any], credited: dict[Model, Credited]) -> Core:
    return Core(
        line_items=[uuid.UUID(x) for x in base["line_items"]],
        podcasts=[uuid.UUID(x) for x in base["podcasts"]],
        total=Reach(*base["total"]),
        by_line_item={k: Reach(n, h) for k, n, h in base["by_line_item"]},
        by_podcast={k: Reach(n, h) for k, n, h in base["by_podcast"]},
        impressions_by_pair={(li, pod): n for li, pod, n in base["by_pair"]},
        promo_purchases=dict(base["promo"]),
        unattributed=Unattributed(*base["unattributed"]),
        data_end=datetime.fromisoformat(base["data_end"]),
        lift=LiftResult(
            bytes.fromhex(base["lift"]) if base["lift"] is not None else None,
            base["lift_reason"],
        ),
        credited=credited,
    )


def _credited(model: Model, rows: list[list[int]]) -> Credited:
    return Credited(model, {(row[0], row[1]): row[2:] for row in rows})


class ReportCache:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    async def get(
        self, key: str, version: int, models: Sequence[Model]
    ) -> tuple[dict[str, Any], dict[Model, Credited]] | None:
        """The shared part and every model's units at `version`, or None."""
        if self._ttl_s <= 0:
            return None
        try:
            found = await self._redis.mget([f"{key}:base", *(f"{key}:m{int(m)}" for m in models)])
        except (RedisError, OSError) as error:
            log.warning("report cache unavailable", extra={"fields": {"error": repr(error)}})
            LOOKUPS.labels("error").inc()
            return None
        decoded = []
        for blob in found:
            if blob is None:
                LOOKUPS.labels("miss").inc()
                return None
            entry = json.loads(blob)
            if entry["v"] != version:
                LOOKUPS.labels("stale").inc()
                return None
            decoded.append(entry["d"])
        LOOKUPS.labels("hit").inc()
        return decoded[0], {
            m: _credited(m, rows) for m, rows in zip(models, decoded[1:], strict=True)
        }

    async def put(self, key: str, version: int, core: Core) -> None:
        if self._ttl_s <= 0:
            return
        entries = {f"{key}:base": json.dumps({"v": version, "d": _base(core)})}
        for model, credited in core.credited.items():
            entries[f"{key}:m{int(model)}"] = json.dumps({"v": version, "d": _pairs(credited)})
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for name, value in entries.items():
                    pipe.set(name, value, ex=self._ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as error:
            log.warning("report cache unavailable", extra={"fields": {"error": repr(error)}})

    @staticmethod
    def core(base: dict[str, Any], credited: dict[Model, Credited]) -> Core:
        return _core(base, credited)
