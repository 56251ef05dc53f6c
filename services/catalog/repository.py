"""SQL for the catalog service. Every function runs inside a transaction the caller
opened; tenant rows are only visible inside that tenant's transaction (RLS)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from services.catalog.domain import (
    AdInsertion,
    AdPosition,
    AdSlot,
    Episode,
    EpisodeFilter,
    EpisodeType,
    Keyword,
    Podcast,
    PodcastFilter,
    PodcastType,
    SearchHit,
    category_keys,
)
from services.shared.audit_outbox import Outbox
from services.shared.errors import AlreadyExists

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
# Where every catalog change's audit record is written (services.shared.audit_outbox).
AUDIT = Outbox("catalog")
Terms = Mapping[str, int]
_INSERT_CHUNK = 500

_PODCAST_COLUMNS = """podcast_id, title, author, description, categories, language, feed_url,
    artwork_url, website_url, owner_name, owner_email, explicit, podcast_type, podcast_guid,
    keywords, episode_count, latest_publish_at, last_import_at, created_at, updated_at"""
_EPISODE_COLUMNS = """episode_id, podcast_id, guid, title, description, publish_at, media_url,
    normalized_media_url, media_type, media_size_bytes, duration_ms, bitrate_bps,
    bitrate_derived, id3_size_bytes, season_number, episode_number, episode_type, explicit,
    artwork_url, transcript <> '' AS has_transcript, transcript_url, ad_slots, created_at,
    updated_at"""
# What resolving a listener request needs: no descriptions, no transcript test.
_MEDIA_COLUMNS = """episode_id, podcast_id, guid, title, publish_at, media_url,
    normalized_media_url, media_size_bytes, duration_ms, bitrate_bps, bitrate_derived,
    id3_size_bytes, ad_slots, updated_at"""

# Unique indexes and constraints -> what the caller is told.
_TAKEN = {
    "episodes_media_url_key": (
        "EPISODE_MEDIA_URL_TAKEN",
        "episode.media_url",
        "another episode of this tenant has the same media URL (after normalisation)",
    ),
    "episodes_guid_key": (
        "EPISODE_GUID_TAKEN",
        "episode.guid",
        "another episode of this podcast has the same GUID",
    ),
    "podcasts_feed_url": (
        "PODCAST_FEED_URL_TAKEN",
        "podcast.feed_url",
        "another podcast of this tenant is imported from the same feed URL",
    ),
    "podcasts_guid": (
        "PODCAST_GUID_TAKEN",
        "podcast.podcast_guid",
        "another podcast of this tenant has the same podcast:guid",
    ),
}


@contextmanager
def unique_as_already_exists() -> Iterator[None]:
    """Turns a unique violation of a catalog key into ALREADY_EXISTS naming it."""
    try:
        yield
    except asyncpg.UniqueViolationError as error:
        known = _TAKEN.get(error.constraint_name or "")
        if known is None:
            raise
        reason, field, message = known
        raise AlreadyExists(message, reason=reason, metadata={"field": field}) from None


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _podcast(row: asyncpg.Record) -> Podcast:
    return Podcast(
        id=row["podcast_id"],
        title=row["title"],
        author=row["author"],
        description=row["description"],
        categories=tuple(row["categories"]),
        language=row["language"],
        feed_url=row["feed_url"],
        artwork_url=row["artwork_url"],
        website_url=row["website_url"],
        owner_name=row["owner_name"],
        owner_email=row["owner_email"],
        explicit=row["explicit"],
        podcast_type=PodcastType(row["podcast_type"]),
        podcast_guid=row["podcast_guid"],
        keywords=tuple(Keyword(k["text"], k["weight"]) for k in json.loads(row["keywords"])),
        episode_count=row["episode_count"],
        latest_publish_at=row["latest_publish_at"],
        last_import_at=row["last_import_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _slots_to_json(slots: Sequence[AdSlot]) -> str:
    return _json(
        [
            {
                "id": str(s.id),
                "position": int(s.position),
                "insertion": int(s.insertion),
                "start_offset_ms": s.start_offset_ms,
                "duration_ms": s.duration_ms,
                "given_start_byte": s.given_start_byte,
                "given_end_byte": s.given_end_byte,
                "start_byte": s.start_byte,
                "end_byte": s.end_byte,
            }
            for s in slots
        ]
    )


def _slots(raw: str) -> tuple[AdSlot, ...]:
    return tuple(
        AdSlot(
            id=uuid.UUID(s["id"]),
            position=AdPosition(s["position"]),
            insertion=AdInsertion(s["insertion"]),
            start_offset_ms=s["start_offset_ms"],
            duration_ms=s["duration_ms"],
            given_start_byte=s["given_start_byte"],
            given_end_byte=s["given_end_byte"],
            start_byte=s["start_byte"],
            end_byte=s["end_byte"],
        )
        for s in json.loads(raw)
    )


def _episode(row: asyncpg.Record) -> Episode:
    return Episode(
        id=row["episode_id"],
        podcast_id=row["podcast_id"],
        guid=row["guid"],
        title=row["title"],
        description=row["description"],
        publish_at=row["publish_at"],
        media_url=row["media_url"],
        normalized_media_url=row["normalized_media_url"],
        media_type=row["media_type"],
        media_size_bytes=row["media_size_bytes"],
        duration_ms=row["duration_ms"],
        bitrate_bps=row["bitrate_bps"],
        bitrate_derived=row["bitrate_derived"],
        id3_size_bytes=row["id3_size_bytes"],
        season_number=row["season_number"],
        episode_number=row["episode_number"],
        episode_type=EpisodeType(row["episode_type"]),
        explicit=row["explicit"],
        artwork_url=row["artwork_url"],
        has_transcript=row["has_transcript"],
        transcript_url=row["transcript_url"],
        ad_slots=_slots(row["ad_slots"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _media(row: asyncpg.Record) -> Episode:
    return Episode(
        id=row["episode_id"],
        podcast_id=row["podcast_id"],
        guid=row["guid"],
        title=row["title"],
        publish_at=row["publish_at"],
        media_url=row["media_url"],
        normalized_media_url=row["normalized_media_url"],
        media_size_bytes=row["media_size_bytes"],
        duration_ms=row["duration_ms"],
        bitrate_bps=row["bitrate_bps"],
        bitrate_derived=row["bitrate_derived"],
        id3_size_bytes=row["id3_size_bytes"],
        ad_slots=_slots(row["ad_slots"]),
        updated_at=row["updated_at"],
    )


# Podcasts


def _podcast_values(podcast: Podcast) -> tuple[Any, ...]:
    return (
        podcast.title,
        podcast.author,
        podcast.description,
        list(podcast.categories),
        category_keys(podcast.categories),
        podcast.language,
        podcast.feed_url,
        podcast.artwork_url,
        podcast.website_url,
        podcast.owner_name,
        podcast.owner_email,
        podcast.explicit,
        int(podcast.podcast_type),
        podcast.podcast_guid,
    )


async def insert_podcast(
    conn: Conn, tenant_id: uuid.UUID, podcast: Podcast, text_terms: Terms
) -> Podcast:
    with unique_as_already_exists():
        row = await conn.fetchrow(
            f"""
            INSERT INTO podcasts (tenant_id, podcast_id, title, author, description, categories,
                category_keys, language, feed_url, artwork_url, website_url, owner_name,
                owner_email, explicit, podcast_type, podcast_guid, text_terms)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                $17::jsonb)
            RETURNING {_PODCAST_COLUMNS}
            """,
            tenant_id,
            podcast.id,
            *_podcast_values(podcast),
            _json(text_terms),
        )
    assert row is not None
    return _podcast(row)


async def get_podcast(
    conn: Conn, podcast_id: uuid.UUID, *, for_update: bool = False
) -> Podcast | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_PODCAST_COLUMNS} FROM podcasts WHERE podcast_id = $1{lock}", podcast_id
    )
    return _podcast(row) if row else None


async def podcast_text_terms(conn: Conn, podcast_id: uuid.UUID) -> dict[str, int]:
    raw = await conn.fetchval("SELECT text_terms FROM podcasts WHERE podcast_id = $1", podcast_id)
    return dict(json.loads(raw)) if raw else {}


async def find_podcast_for_feed(
    conn: Conn, feed_urls: Sequence[str], podcast_guid: str
) -> Podcast | None:
    """The podcast a feed belongs to: by any URL the feed is known by, else by
    its podcast:guid. Locked for the import."""
    row = await conn.fetchrow(
        f"""
        SELECT {_PODCAST_COLUMNS} FROM podcasts
        WHERE (feed_url <> '' AND feed_url = ANY($1::text[]))
           OR ($2 <> '' AND podcast_guid = $2)
        ORDER BY (feed_url = ANY($1::text[])) DESC, created_at
        LIMIT 1
        FOR UPDATE
        """,
        list(feed_urls),
        podcast_guid,
    )
    return _podcast(row) if row else None


async def list_podcasts(
    conn: Conn, where: PodcastFilter, after: tuple[str, uuid.UUID] | None, limit: int
) -> list[Podcast]:
    rows = await conn.fetch(
        f"""
        SELECT {_PODCAST_COLUMNS} FROM podcasts
        WHERE ($1::text IS NULL OR (lower(title), podcast_id) > ($1, $2::uuid))
          AND ($3 = '' OR category_keys @> ARRAY[$3])
          AND ($4 = '' OR lower(language) = $4 OR lower(language) LIKE $4 || '-%')
          AND ($5 = '' OR feed_url = $5)
        ORDER BY lower(title), podcast_id
        LIMIT $6
        """,
        after[0] if after else None,
        after[1] if after else None,
        where.category.lower(),
        where.language.lower(),
        where.feed_url,
        limit,
    )
    return [_podcast(r) for r in rows]


async def update_podcast(conn: Conn, podcast: Podcast, text_terms: Terms) -> Podcast:
    with unique_as_already_exists():
        row = await conn.fetchrow(
            f"""
            UPDATE podcasts SET title = $2, author = $3, description = $4, categories = $5,
                category_keys = $6, language = $7, feed_url = $8, artwork_url = $9,
                website_url = $10, owner_name = $11, owner_email = $12, explicit = $13,
                podcast_type = $14, podcast_guid = $15, text_terms = $16::jsonb,
                updated_at = now()
            WHERE podcast_id = $1
            RETURNING {_PODCAST_COLUMNS}
            """,
            podcast.id,
            *_podcast_values(podcast),
            _json(text_terms),
        )
    assert row is not None
    return _podcast(row)


async def mark_imported(conn: Conn, podcast_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE podcasts SET last_import_at = now() WHERE podcast_id = $1", podcast_id
    )


async def count_episodes(conn: Conn, podcast_id: uuid.UUID) -> int:
    return int(
        await conn.fetchval("SELECT count(*) FROM episodes WHERE podcast_id = $1", podcast_id)
    )


async def count_podcasts(conn: Conn, tenant_id: uuid.UUID) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM podcasts WHERE tenant_id = $1", tenant_id
    )
    return count


async def delete_podcast(conn: Conn, podcast_id: uuid.UUID) -> None:
    # Episodes and terms go with it (ON DELETE CASCADE).
    await conn.execute("DELETE FROM podcasts WHERE podcast_id = $1", podcast_id)


async def refresh_podcast_stats(conn: Conn, podcast_id: uuid.UUID) -> None:
    await conn.execute(
        """
        UPDATE podcasts p SET episode_count = s.n, latest_publish_at = s.latest
        FROM (SELECT count(*) AS n, max(publish_at) AS latest
              FROM episodes WHERE podcast_id = $1) s
        WHERE p.podcast_id = $1
          AND (p.episode_count, p.latest_publish_at) IS DISTINCT FROM (s.n, s.latest)
        """,
        podcast_id,
    )


async def all_podcast_ids(conn: Conn) -> list[uuid.UUID]:
    return [r["podcast_id"] for r in await conn.fetch("SELECT podcast_id FROM podcasts")]


async def set_keywords(conn: Conn, keywords: Mapping[uuid.UUID, Sequence[Keyword]]) -> None:
    await conn.executemany(
        "UPDATE podcasts SET keywords = $2::jsonb WHERE podcast_id = $1 "
        "AND keywords IS DISTINCT FROM $2::jsonb",
        [
            (podcast_id, _json([{"text": k.text, "weight": k.weight} for k in words]))
            for podcast_id, words in keywords.items()
        ],
    )


# Terms


async def apply_term_delta(
    conn: Conn, tenant_id: uuid.UUID, podcast_id: uuid.UUID, delta: Terms
) -> None:
    """Adds `delta` to the podcast's term counts; counts that reach 0 go."""
    changed = {term: n for term, n in delta.items() if n}
    if not changed:
        return
    terms, changes = list(changed), list(changed.values())
    await conn.execute(
        """
        UPDATE podcast_terms t SET occurrences = greatest(t.occurrences + d.n, 0)
        FROM unnest($2::text[], $3::int[]) AS d(term, n)
        WHERE t.podcast_id = $1 AND t.term = d.term
        """,
        podcast_id,
        terms,
        changes,
    )
    await conn.execute(
        """
        INSERT INTO podcast_terms (tenant_id, podcast_id, term, occurrences)
        SELECT $1, $2, d.term, d.n FROM unnest($3::text[], $4::int[]) AS d(term, n)
        WHERE d.n > 0
        ON CONFLICT (tenant_id, podcast_id, term) DO NOTHING
        """,
        tenant_id,
        podcast_id,
        terms,
        changes,
    )
    await conn.execute(
        "DELETE FROM podcast_terms WHERE podcast_id = $1 AND term = ANY($2::text[]) "
        "AND occurrences = 0",
        podcast_id,
        terms,
    )


async def keyword_inputs(
    conn: Conn, podcast_ids: Sequence[uuid.UUID], candidates: int
) -> tuple[int, dict[uuid.UUID, dict[str, int]], dict[str, int]]:
    """The number of podcasts, each podcast's most frequent terms, and in how
    many podcasts each of those terms occurs."""
    documents = int(await conn.fetchval("SELECT count(*) FROM podcasts"))
    rows = await conn.fetch(
        """
        SELECT p.id AS podcast_id, c.term, c.occurrences,
               (SELECT count(*) FROM podcast_terms d WHERE d.term = c.term) AS df
        FROM unnest($1::uuid[]) AS p(id)
        CROSS JOIN LATERAL (
            SELECT term, occurrences FROM podcast_terms
            WHERE podcast_id = p.id ORDER BY occurrences DESC, term LIMIT $2
        ) c
        """,
        list(podcast_ids),
        candidates,
    )
    counts: dict[uuid.UUID, dict[str, int]] = {p: {} for p in podcast_ids}
    df: dict[str, int] = {}
    for row in rows:
        counts[row["podcast_id"]][row["term"]] = row["occurrences"]
        df[row["term"]] = row["df"]
    return documents, counts, df


async def similar_terms(
    conn: Conn, words: Sequence[str], limit: int = 5
) -> dict[str, list[tuple[str, float]]]:
    """For query words the catalog's vocabulary does not contain, the most
    similar words it does contain, with their pg_trgm similarity, best first."""
    if not words:
        return {}
    rows = await conn.fetch(
        "SELECT word, term, similarity FROM catalog_similar_terms($1::text[], $2)",
        list(words),
        limit,
    )
    found: dict[str, list[tuple[str, float]]] = {}
    for row in rows:
        found.setdefault(row["word"], []).append((row["term"], row["similarity"]))
    for alternatives in found.values():
        alternatives.sort(key=lambda entry: (-entry[1], entry[0]))
    return found


# Episodes


def _episode_values(episode: Episode) -> tuple[Any, ...]:
    return (
        episode.title,
        episode.description,
        episode.publish_at,
        episode.media_url,
        episode.normalized_media_url,
        episode.media_type,
        episode.media_size_bytes,
        episode.duration_ms,
        episode.bitrate_bps,
        episode.bitrate_derived,
        episode.id3_size_bytes,
        episode.season_number,
        episode.episode_number,
        int(episode.episode_type),
        episode.explicit,
        episode.artwork_url,
        episode.transcript_url,
        _slots_to_json(episode.ad_slots),
    )


_INSERT_EPISODE = """
    INSERT INTO episodes (tenant_id, episode_id, podcast_id, guid, title, description,
        publish_at, media_url, normalized_media_url, media_type, media_size_bytes, duration_ms,
        bitrate_bps, bitrate_derived, id3_size_bytes, season_number, episode_number,
        episode_type, explicit, artwork_url, transcript_url, ad_slots, transcript, text_terms,
        transcript_terms)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
        $19, $20, $21, $22::jsonb, $23, $24::jsonb, $25::jsonb)
"""


def _insert_args(
    tenant_id: uuid.UUID, episode: Episode, text_terms: Terms, transcript_terms: Terms
) -> tuple[Any, ...]:
    return (
        tenant_id,
        episode.id,
        episode.podcast_id,
        episode.guid,
        *_episode_values(episode),
        episode.transcript or "",
        _json(text_terms),
        _json(transcript_terms),
    )


async def insert_episode(
    conn: Conn,
    tenant_id: uuid.UUID,
    episode: Episode,
    text_terms: Terms,
    transcript_terms: Terms,
) -> Episode:
    with unique_as_already_exists():
        row = await conn.fetchrow(
            _INSERT_EPISODE + f" RETURNING {_EPISODE_COLUMNS}",
            *_insert_args(tenant_id, episode, text_terms, transcript_terms),
        )
    assert row is not None
    return _episode(row)


async def insert_episodes(
    conn: Conn,
    tenant_id: uuid.UUID,
    episodes: Sequence[tuple[Episode, Terms, Terms]],
) -> None:
    # In chunks: encoding the arguments is CPU work on the event loop, and
    # between chunks the loop serves other calls.
    with unique_as_already_exists():
        for start in range(0, len(episodes), _INSERT_CHUNK):
            chunk = episodes[start : start + _INSERT_CHUNK]
            await conn.executemany(
                _INSERT_EPISODE, [_insert_args(tenant_id, *entry) for entry in chunk]
            )


async def get_episode(
    conn: Conn, episode_id: uuid.UUID, *, for_update: bool = False
) -> Episode | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_EPISODE_COLUMNS} FROM episodes WHERE episode_id = $1{lock}", episode_id
    )
    return _episode(row) if row else None


async def episode_terms(conn: Conn, episode_id: uuid.UUID) -> tuple[dict[str, int], dict[str, int]]:
    row = await conn.fetchrow(
        "SELECT text_terms, transcript_terms FROM episodes WHERE episode_id = $1", episode_id
    )
    assert row is not None
    return json.loads(row["text_terms"]), json.loads(row["transcript_terms"])


async def get_episodes(conn: Conn, episode_ids: Sequence[uuid.UUID]) -> list[Episode]:
    rows = await conn.fetch(
        f"SELECT {_EPISODE_COLUMNS} FROM episodes WHERE episode_id = ANY($1::uuid[])",
        list(episode_ids),
    )
    return [_episode(r) for r in rows]


async def list_episodes(
    conn: Conn,
    podcast_id: uuid.UUID,
    where: EpisodeFilter,
    after: tuple[datetime | None, uuid.UUID] | None,
    limit: int,
) -> list[Episode]:
    rows = await conn.fetch(
        f"""
        SELECT {_EPISODE_COLUMNS} FROM episodes
        WHERE podcast_id = $1
          AND ($3::uuid IS NULL
               OR (list_at, episode_id) < (coalesce($2::timestamptz, '-infinity'), $3::uuid))
          AND ($4::timestamptz IS NULL OR publish_at >= $4)
          AND ($5::timestamptz IS NULL OR publish_at < $5)
          AND ($6 = 0 OR episode_type = $6)
          AND ($7 = 0 OR season_number = $7)
        ORDER BY list_at DESC, episode_id DESC
        LIMIT $8
        """,
        podcast_id,
        after[0] if after else None,
        after[1] if after else None,
        where.publish_start,
        where.publish_end,
        int(where.episode_type),
        where.season_number,
        limit,
    )
    return [_episode(r) for r in rows]


async def update_episode(
    conn: Conn,
    episode: Episode,
    text_terms: Terms | None = None,
    transcript_terms: Terms | None = None,
) -> Episode:
    """Writes every stored field; the transcript and term counts only when given."""
    with unique_as_already_exists():
        row = await conn.fetchrow(
            f"""
            UPDATE episodes SET title = $2, description = $3, publish_at = $4, media_url = $5,
                normalized_media_url = $6, media_type = $7, media_size_bytes = $8,
                duration_ms = $9, bitrate_bps = $10, bitrate_derived = $11,
                id3_size_bytes = $12, season_number = $13, episode_number = $14,
                episode_type = $15, explicit = $16, artwork_url = $17, transcript_url = $18,
                ad_slots = $19::jsonb,
                transcript = coalesce($20, transcript),
                text_terms = coalesce($21::jsonb, text_terms),
                transcript_terms = coalesce($22::jsonb, transcript_terms),
                updated_at = now()
            WHERE episode_id = $1
            RETURNING {_EPISODE_COLUMNS}
            """,
            episode.id,
            *_episode_values(episode),
            episode.transcript,
            _json(text_terms) if text_terms is not None else None,
            _json(transcript_terms) if transcript_terms is not None else None,
        )
    assert row is not None
    return _episode(row)


async def delete_episode(conn: Conn, episode_id: uuid.UUID) -> Episode | None:
    row = await conn.fetchrow(
        f"DELETE FROM episodes WHERE episode_id = $1 RETURNING {_EPISODE_COLUMNS}", episode_id
    )
    return _episode(row) if row else None


async def podcast_episodes(
    conn: Conn, podcast_id: uuid.UUID
) -> list[tuple[Episode, dict[str, int], dict[str, int]]]:
    """Every episode of a podcast with its term counts, for an import to merge into."""
    rows = await conn.fetch(
        f"""
        SELECT {_EPISODE_COLUMNS}, text_terms, transcript_terms FROM episodes
        WHERE podcast_id = $1 FOR UPDATE
        """,
        podcast_id,
    )
    return [
        (_episode(r), json.loads(r["text_terms"]), json.loads(r["transcript_terms"])) for r in rows
    ]


async def episodes_lacking_transcripts(
    conn: Conn, podcast_id: uuid.UUID, limit: int
) -> list[tuple[uuid.UUID, str, str]]:
    """(id, GUID, transcript URL) of episodes with a transcript file but no text, newest first."""
    rows = await conn.fetch(
        """
        SELECT episode_id, guid, transcript_url FROM episodes
        WHERE podcast_id = $1 AND transcript_url <> '' AND transcript = ''
        ORDER BY list_at DESC, episode_id DESC
        LIMIT $2
        """,
        podcast_id,
        limit,
    )
    return [(r["episode_id"], r["guid"], r["transcript_url"]) for r in rows]


async def set_transcript(
    conn: Conn, episode_id: uuid.UUID, url: str, text: str, terms: Terms
) -> dict[str, int] | None:
    """Stores a fetched transcript unless the episode has since moved to another
    file; the transcript terms it had, or None when nothing was stored."""
    raw = await conn.fetchval(
        """
        UPDATE episodes e SET transcript = $3, transcript_terms = $4::jsonb, updated_at = now()
        FROM (SELECT transcript_terms FROM episodes WHERE episode_id = $1 FOR UPDATE) old
        WHERE e.episode_id = $1 AND e.transcript_url = $2
        RETURNING old.transcript_terms
        """,
        episode_id,
        url,
        text,
        _json(terms),
    )
    return dict(json.loads(raw)) if raw is not None else None


async def media_url_owners(
    conn: Conn, normalized_urls: Sequence[str]
) -> dict[str, tuple[uuid.UUID, uuid.UUID]]:
    """normalized media URL -> (episode id, podcast id) of the episodes holding them."""
    rows = await conn.fetch(
        "SELECT normalized_media_url, episode_id, podcast_id FROM episodes "
        "WHERE normalized_media_url = ANY($1::text[])",
        list(normalized_urls),
    )
    return {r["normalized_media_url"]: (r["episode_id"], r["podcast_id"]) for r in rows}


async def resolve_by_ids(conn: Conn, episode_ids: Sequence[uuid.UUID]) -> list[Episode]:
    rows = await conn.fetch(
        f"SELECT {_MEDIA_COLUMNS} FROM episodes WHERE episode_id = ANY($1::uuid[])",
        list(episode_ids),
    )
    return [_media(r) for r in rows]


async def resolve_by_urls(conn: Conn, normalized_urls: Sequence[str]) -> list[Episode]:
    # Probes the unique (tenant_id, normalized_media_url) index once per URL.
    rows = await conn.fetch(
        f"SELECT {_MEDIA_COLUMNS} FROM episodes WHERE normalized_media_url = ANY($1::text[])",
        list(normalized_urls),
    )
    return [_media(r) for r in rows]


# Search


_SCORE = """
    (CASE WHEN lower({t}.title) = lower($1) THEN 3 ELSE 0 END
     + greatest(ts_rank_cd({t}.search_vector, q.exact, 32),
                0.8 * coalesce(ts_rank_cd({t}.search_vector, q.fuzzy, 32), 0))
     + word_similarity($1, {t}.title))::float8
"""
_QUERIES = """
    (SELECT websearch_to_tsquery('english', $1) AS exact,
            to_tsquery('english', $2::text) AS fuzzy) q
"""


async def search_podcasts(
    conn: Conn,
    query: str,
    fuzzy: str | None,
    where: PodcastFilter,
    after: tuple[float, uuid.UUID] | None,
    limit: int,
) -> list[SearchHit[Podcast]]:
    """Podcasts matching the words (or, through `fuzzy`, their corrected
    spellings, or the title by trigram similarity), best first. The matches come
    from catalog_podcast_matches(), which can use the GIN indexes (see 0010_catalog).

    An exact title match outranks everything (+3 against at most 2 otherwise),
    then full-text rank (a corrected spelling counts a little less), then how
    closely the title resembles the query.
    """
    rows = await conn.fetch(
        f"""
        SELECT * FROM (
            SELECT {_PODCAST_COLUMNS}, {_SCORE.format(t="p")} AS score
            FROM podcasts p, {_QUERIES}
            WHERE p.podcast_id IN (SELECT podcast_id FROM catalog_podcast_matches($1, $2))
              AND ($3 = '' OR p.category_keys @> ARRAY[$3])
              AND ($4 = '' OR lower(p.language) = $4 OR lower(p.language) LIKE $4 || '-%')
        ) s
        WHERE $5::float8 IS NULL OR s.score < $5 OR (s.score = $5 AND s.podcast_id > $6::uuid)
        ORDER BY s.score DESC, s.podcast_id
        LIMIT $7
        """,
        query,
        fuzzy,
        where.category.lower(),
        where.language.lower(),
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [SearchHit(_podcast(r), r["score"]) for r in rows]


async def search_episodes(
    conn: Conn,
    query: str,
    fuzzy: str | None,
    podcast_id: uuid.UUID | None,
    after: tuple[float, uuid.UUID] | None,
    limit: int,
) -> list[SearchHit[Episode]]:
    """Episodes by title, description and transcript; ranked as search_podcasts."""
    rows = await conn.fetch(
        f"""
        SELECT * FROM (
            SELECT {_EPISODE_COLUMNS}, {_SCORE.format(t="e")} AS score
            FROM episodes e, {_QUERIES}
            WHERE e.episode_id IN (SELECT episode_id FROM catalog_episode_matches($1, $2))
              AND ($3::uuid IS NULL OR e.podcast_id = $3)
        ) s
        WHERE $4::float8 IS NULL OR s.score < $4 OR (s.score = $4 AND s.episode_id > $5::uuid)
        ORDER BY s.score DESC, s.episode_id
        LIMIT $6
        """,
        query,
        fuzzy,
        podcast_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [SearchHit(_episode(r), r["score"]) for r in rows]
