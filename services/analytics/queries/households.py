"""The distinct households that downloaded some podcasts' episodes in a period
(ListPodcastHouseholds): attribution's lift draws its control group from them.

A campaign's podcasts can have hundreds of thousands of households in a flight, so
PostgreSQL deduplicates them and packs them into chunks of concatenated 16-byte ids
itself, read from the downloads_households_by_podcast index alone: one row per chunk
reaches Python, never one per household.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.shared.db import Database
from services.shared.validation import Violations

MAX_PODCASTS = 1000
MAX_RANGE = timedelta(days=400)
# 1 MiB of ids per message, well under gRPC's 4 MiB default message limit.
CHUNK_IDS = 65_536


@dataclass(frozen=True)
class HouseholdsQuery:
    podcast_ids: Sequence[uuid.UUID]
    start: datetime
    end: datetime


def check(query: HouseholdsQuery) -> None:
    v = Violations()
    v.check(bool(query.podcast_ids), "podcast_ids", "give at least one podcast id")
    v.check(
        len(query.podcast_ids) <= MAX_PODCASTS,
        "podcast_ids",
        f"at most {MAX_PODCASTS} podcast ids",
    )
    if v.check(query.end > query.start, "end_time", "must be after start_time"):
        v.check(query.end - query.start <= MAX_RANGE, "end_time", "at most 400 days after start")
    v.raise_if_any()


class PodcastHouseholds:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def chunks(self, tenant_id: uuid.UUID, query: HouseholdsQuery) -> AsyncIterator[bytes]:
        """The households as packed 16-byte ids, at most CHUNK_IDS per chunk.

        One snapshot for the whole stream: the transaction stays open until the last
        chunk is sent, so a download counted meanwhile is never half in.
        """
        check(query)
        async with self._db.tenant_transaction(tenant_id) as conn:
            cursor = conn.cursor(
                """
                SELECT string_agg(household_id, ''::bytea)
                FROM (
                    SELECT household_id, (row_number() OVER () - 1) / $5 AS chunk
                    FROM (
                        SELECT DISTINCT household_id FROM downloads
                        WHERE tenant_id = $1 AND podcast_id = ANY($2::uuid[])
                            AND download_time >= $3 AND download_time < $4
                            AND household_id IS NOT NULL
                    ) distinct_households
                ) numbered
                GROUP BY chunk
                """,
                tenant_id,
                sorted(set(query.podcast_ids)),
                query.start,
                query.end,
                CHUNK_IDS,
                prefetch=4,
            )
            async for record in cursor:
                chunk: bytes = record[0]
                yield chunk
