"""The catalog service's operations: each write one tenant transaction, with the
podcast's term counts, statistics and keywords brought up to date inside it."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar

from services.catalog import repository as repo
from services.catalog.config import CatalogSettings
from services.catalog.domain import (
    EPISODE_UPDATABLE,
    PODCAST_UPDATABLE,
    Episode,
    EpisodeFilter,
    EpisodeMedia,
    Podcast,
    PodcastFilter,
    SearchHit,
    apply_episode_update,
    apply_podcast_update,
    episode_media,
    is_language,
    new_slots_only,
    validate_episode,
    validate_podcast,
)
from services.catalog.feeds import (
    FeedWarning,
    ParsedFeed,
    cap_warnings,
    parse_feed,
    transcript_text,
)
from services.catalog.fetch import Fetcher, FetchError, FetchFailure
from services.catalog.importer import merge_podcast, prepare_episodes
from services.catalog.imports import ImportGate, Offloader
from services.catalog.peers import PodcastQuota
from services.catalog.text import (
    add_terms,
    correctable,
    fuzzy_tsquery,
    query_words,
    rank_keywords,
    spelling_alternatives,
    term_delta,
    text_terms,
    transcript_terms,
)
from services.catalog.urls import is_http_url, try_normalize_media_url
from services.shared import audit_outbox
from services.shared.change_epochs import ChangeEpochs
from services.shared.db import Database
from services.shared.errors import (
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from services.shared.pagination import PageTokens, split_page
from services.shared.peers import Metadata
from services.shared.validation import Violations, mask_paths

# TF-IDF ranks each podcast's most frequent terms only: a term outside them
# would need a very high IDF to reach the top 20, and this bounds the work.
KEYWORD_CANDIDATES = 200
FULL_REFRESH_MAX_PODCASTS = 100
MAX_BATCH_GET = 200
MAX_BATCH_RESOLVE = 500
MAX_QUERY_LENGTH = 500
_TRANSCRIPT_CONCURRENCY = 4
Hit = TypeVar("Hit", Podcast, Episode)


@dataclass(frozen=True)
class FeedSource:
    url: str = ""
    body: bytes | None = None


@dataclass(frozen=True)
class ImportResult:
    podcast: Podcast
    podcast_created: bool
    created: int
    updated: int
    unchanged: int
    missing: int
    skipped: int
    warnings: list[FeedWarning] = field(default_factory=list)


@dataclass
class _TermChanges:
    """Term count changes per podcast, gathered over a write."""

    by_podcast: dict[uuid.UUID, Counter[str]] = field(default_factory=dict)

    def add(self, podcast_id: uuid.UUID, delta: Mapping[str, int]) -> None:
        add_terms(self.by_podcast.setdefault(podcast_id, Counter()), delta)


class Catalog:
    def __init__(
        self,
        db: Database,
        page_tokens: PageTokens,
        fetcher: Fetcher,
        settings: CatalogSettings,
        offloader: Offloader,
        quota: PodcastQuota,
        epochs: ChangeEpochs,
    ) -> None:
        self._db = db
        self._epochs = epochs
        self._quota = quota
        self._tokens = page_tokens
        self._fetcher = fetcher
        self._settings = settings
        self._offloader = offloader
        self._imports = ImportGate(
            per_tenant=settings.imports_per_tenant, total=settings.imports_max_concurrent
        )

    @asynccontextmanager
    async def _change(self, tenant_id: uuid.UUID) -> AsyncIterator[repo.Conn]:
        """A transaction that changes the tenant's catalog; once it committed, services
        that keep catalog answers (campaign bookings) learn that theirs are old."""
        async with self._db.tenant_transaction(tenant_id) as conn:
            yield conn
        await self._epochs.bump(tenant_id)

    # Podcasts

    async def create_podcast(
        self, tenant_id: uuid.UUID, podcast: Podcast, credentials: Metadata
    ) -> Podcast:
        podcast = validate_podcast(replace(podcast, id=uuid.uuid4()))
        terms = text_terms(podcast.title, podcast.description)
        limit = await self._quota.max_podcasts(tenant_id, credentials)
        async with self._change(tenant_id) as conn:
            await _admit_podcast(conn, tenant_id, limit)
            await repo.insert_podcast(conn, tenant_id, podcast, terms)
            await repo.apply_term_delta(conn, tenant_id, podcast.id, terms)
            await _refresh_keywords(conn, [podcast.id], podcasts_changed=True)
            await _audit(conn, tenant_id, ("podcast", podcast.id), {"title": podcast.title})
            return await _podcast_or_fail(conn, podcast.id)

    async def get_podcast(self, tenant_id: uuid.UUID, podcast_id: uuid.UUID) -> Podcast:
        async with self._db.tenant_transaction(tenant_id) as conn:
            return await _podcast_or_fail(conn, podcast_id)

    async def list_podcasts(
        self, tenant_id: uuid.UUID, where: PodcastFilter, page_size: int, page_token: str
    ) -> tuple[list[Podcast], str]:
        _check_filter(where)
        query = {"list": "podcasts", "filter": where}
        cursor = self._tokens.decode(page_token, query)
        after = (cursor["t"], uuid.UUID(cursor["id"])) if cursor else None
        async with self._db.tenant_transaction(tenant_id) as conn:
            rows = await repo.list_podcasts(conn, where, after, page_size + 1)
        page, more = split_page(rows, page_size)
        token = ""
        if more:
            last = page[-1]
            token = self._tokens.encode({"t": last.title.lower(), "id": str(last.id)}, query)
        return list(page), token

    async def update_podcast(
        self, tenant_id: uuid.UUID, patch: Podcast, paths: Sequence[str]
    ) -> Podcast:
        requested = mask_paths(paths, PODCAST_UPDATABLE)
        async with self._change(tenant_id) as conn:
            current = await repo.get_podcast(conn, patch.id, for_update=True)
            if current is None:
                raise NotFound("podcast", str(patch.id))
            updated = apply_podcast_update(current, patch, requested)
            old_terms = await repo.podcast_text_terms(conn, patch.id)
            terms = text_terms(updated.title, updated.description)
            await repo.update_podcast(conn, updated, terms)
            delta = term_delta(old_terms, terms)
            if delta:
                await repo.apply_term_delta(conn, tenant_id, patch.id, delta)
                await _refresh_keywords(conn, [patch.id])
            await _audit(conn, tenant_id, ("podcast", patch.id), {"update_mask": sorted(requested)})
            return await _podcast_or_fail(conn, patch.id)

    async def delete_podcast(
        self, tenant_id: uuid.UUID, podcast_id: uuid.UUID, force: bool
    ) -> None:
        async with self._change(tenant_id) as conn:
            if await repo.get_podcast(conn, podcast_id, for_update=True) is None:
                raise NotFound("podcast", str(podcast_id))
            episodes = await repo.count_episodes(conn, podcast_id)
            if episodes and not force:
                raise FailedPrecondition(
                    f"the podcast has {episodes} episodes: delete them first, or set force",
                    reason="PODCAST_HAS_EPISODES",
                    metadata={"episode_count": str(episodes)},
                )
            await repo.delete_podcast(conn, podcast_id)
            await _refresh_keywords(conn, podcasts_changed=True)
            await _audit(conn, tenant_id, ("podcast", podcast_id), {"episodes_deleted": episodes})

    # Episodes

    async def create_episode(
        self, tenant_id: uuid.UUID, podcast_id: uuid.UUID, episode: Episode
    ) -> Episode:
        new_slots_only(episode.ad_slots)
        episode_id = uuid.uuid4()
        episode = validate_episode(
            replace(
                episode,
                id=episode_id,
                podcast_id=podcast_id,
                guid=episode.guid.strip() or str(episode_id),
            )
        )
        if episode.transcript_url and not episode.transcript:
            episode = replace(episode, transcript=await self._transcript(episode.transcript_url))
        words = text_terms(episode.title, episode.description)
        spoken = transcript_terms(episode.transcript or "")
        async with self._change(tenant_id) as conn:
            await _lock_podcast(conn, podcast_id)
            created = await repo.insert_episode(conn, tenant_id, episode, words, spoken)
            await repo.apply_term_delta(conn, tenant_id, podcast_id, words + spoken)
            await repo.refresh_podcast_stats(conn, podcast_id)
            await _refresh_keywords(conn, [podcast_id])
            await _audit(conn, tenant_id, ("episode", created.id), {"podcast_id": podcast_id})
        return created

    async def get_episode(self, tenant_id: uuid.UUID, episode_id: uuid.UUID) -> Episode:
        async with self._db.tenant_transaction(tenant_id) as conn:
            episode = await repo.get_episode(conn, episode_id)
        if episode is None:
            raise NotFound("episode", str(episode_id))
        return episode

    async def batch_get_episodes(
        self, tenant_id: uuid.UUID, episode_ids: Sequence[uuid.UUID]
    ) -> list[Episode]:
        if len(episode_ids) > MAX_BATCH_GET:
            raise InvalidArgument.field("episode_ids", f"at most {MAX_BATCH_GET} ids")
        wanted = list(dict.fromkeys(episode_ids))
        async with self._db.tenant_transaction(tenant_id) as conn:
            found = {e.id: e for e in await repo.get_episodes(conn, wanted)}
        return [found[i] for i in wanted if i in found]

    async def list_episodes(
        self,
        tenant_id: uuid.UUID,
        podcast_id: uuid.UUID,
        where: EpisodeFilter,
        page_size: int,
        page_token: str,
    ) -> tuple[list[Episode], str]:
        v = Violations()
        v.check(where.season_number >= 0, "season_number", "must not be negative")
        if where.publish_start and where.publish_end:
            v.check(
                where.publish_start < where.publish_end,
                "publish_end_time",
                "must be after publish_start_time",
            )
        v.raise_if_any()
        query = {"list": "episodes", "podcast": str(podcast_id), "filter": where}
        cursor = self._tokens.decode(page_token, query)
        after: tuple[datetime | None, uuid.UUID] | None = None
        if cursor:
            published = datetime.fromisoformat(cursor["t"]) if cursor["t"] else None
            after = (published, uuid.UUID(cursor["id"]))
        async with self._db.tenant_transaction(tenant_id) as conn:
            if await repo.get_podcast(conn, podcast_id) is None:
                raise NotFound("podcast", str(podcast_id))
            rows = await repo.list_episodes(conn, podcast_id, where, after, page_size + 1)
        page, more = split_page(rows, page_size)
        token = ""
        if more:
            last = page[-1]
            published_at = last.publish_at.isoformat() if last.publish_at else None
            token = self._tokens.encode({"t": published_at, "id": str(last.id)}, query)
        return list(page), token

    async def update_episode(
        self, tenant_id: uuid.UUID, patch: Episode, paths: Sequence[str]
    ) -> Episode:
        requested = mask_paths(paths, EPISODE_UPDATABLE)
        if "transcript_url" in requested and "transcript" not in requested:
            # A new transcript file replaces the stored text, as on create.
            text = await self._transcript(patch.transcript_url) if patch.transcript_url else ""
            patch = replace(patch, transcript=text)
            requested.add("transcript")
        async with self._change(tenant_id) as conn:
            found = await repo.get_episode(conn, patch.id)
            if found is None:
                raise NotFound("episode", str(patch.id))
            # Podcast before episode, the order every write takes.
            await _lock_podcast(conn, found.podcast_id)
            current = await repo.get_episode(conn, patch.id, for_update=True)
            assert current is not None
            updated = apply_episode_update(current, patch, requested)
            old_words, old_spoken = await repo.episode_terms(conn, patch.id)
            words = spoken = None
            if requested & {"title", "description"}:
                words = text_terms(updated.title, updated.description)
            if "transcript" in requested:
                spoken = transcript_terms(updated.transcript or "")
            saved = await repo.update_episode(conn, updated, words, spoken)
            delta = Counter(term_delta(old_words, words if words is not None else old_words))
            add_terms(delta, term_delta(old_spoken, spoken if spoken is not None else old_spoken))
            await repo.apply_term_delta(conn, tenant_id, current.podcast_id, delta)
            await repo.refresh_podcast_stats(conn, current.podcast_id)
            if any(delta.values()):
                await _refresh_keywords(conn, [current.podcast_id])
            await _audit(conn, tenant_id, ("episode", patch.id), {"update_mask": sorted(requested)})
        return saved

    async def delete_episode(self, tenant_id: uuid.UUID, episode_id: uuid.UUID) -> None:
        async with self._change(tenant_id) as conn:
            found = await repo.get_episode(conn, episode_id)
            if found is None:
                raise NotFound("episode", str(episode_id))
            await _lock_podcast(conn, found.podcast_id)
            words, spoken = await repo.episode_terms(conn, episode_id)
            await repo.delete_episode(conn, episode_id)
            removed = Counter(words) + Counter(spoken)
            await repo.apply_term_delta(
                conn, tenant_id, found.podcast_id, {t: -n for t, n in removed.items()}
            )
            await repo.refresh_podcast_stats(conn, found.podcast_id)
            await _refresh_keywords(conn, [found.podcast_id])
            await _audit(conn, tenant_id, ("episode", episode_id), {"podcast_id": found.podcast_id})

    # Resolving listener requests

    async def resolve_episode(
        self, tenant_id: uuid.UUID, episode_id: uuid.UUID | None, media_url: str
    ) -> EpisodeMedia:
        normalized = ""
        if episode_id is None:
            normalized = try_normalize_media_url(media_url) or ""
            if not normalized:
                raise InvalidArgument.field("media_url", "must be a URL with a host")
        async with self._db.tenant_transaction(tenant_id) as conn:
            if episode_id is not None:
                found = await repo.resolve_by_ids(conn, [episode_id])
            else:
                found = await repo.resolve_by_urls(conn, [normalized])
        if not found:
            raise NotFound("episode", str(episode_id) if episode_id else media_url)
        return episode_media(found[0])

    async def batch_resolve_episodes(
        self, tenant_id: uuid.UUID, episode_ids: Sequence[str], media_urls: Sequence[str]
    ) -> tuple[dict[str, EpisodeMedia], dict[str, EpisodeMedia]]:
        """Keyed exactly as asked; unknown and malformed keys are simply absent."""
        if len(episode_ids) + len(media_urls) > MAX_BATCH_RESOLVE:
            raise InvalidArgument.field(
                "episode_ids", f"episode_ids and media_urls together: at most {MAX_BATCH_RESOLVE}"
            )
        ids: dict[str, uuid.UUID] = {}
        for raw in episode_ids:
            try:
                ids[raw] = uuid.UUID(raw)
            except ValueError:
                continue
        urls = {raw: n for raw in media_urls if (n := try_normalize_media_url(raw))}
        async with self._db.tenant_transaction(tenant_id) as conn:
            by_id = {e.id: e for e in await repo.resolve_by_ids(conn, list(set(ids.values())))}
            by_url = {
                e.normalized_media_url: e
                for e in await repo.resolve_by_urls(conn, list(set(urls.values())))
            }
        return (
            {raw: episode_media(by_id[i]) for raw, i in ids.items() if i in by_id},
            {raw: episode_media(by_url[n]) for raw, n in urls.items() if n in by_url},
        )

    # Search

    async def search_podcasts(
        self,
        tenant_id: uuid.UUID,
        query: str,
        where: PodcastFilter,
        page_size: int,
        page_token: str,
    ) -> tuple[list[SearchHit[Podcast]], str]:
        query = _check_query(query)
        _check_filter(where)
        fingerprint = {"search": "podcasts", "q": query, "filter": where}
        after = self._score_cursor(page_token, fingerprint)
        async with self._db.tenant_transaction(tenant_id) as conn:
            fuzzy = await _fuzzy_query(conn, query)
            hits = await repo.search_podcasts(conn, query, fuzzy, where, after, page_size + 1)
        return self._score_page(hits, page_size, fingerprint)

    async def search_episodes(
        self,
        tenant_id: uuid.UUID,
        query: str,
        podcast_id: uuid.UUID | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[SearchHit[Episode]], str]:
        query = _check_query(query)
        fingerprint = {"search": "episodes", "q": query, "podcast": str(podcast_id or "")}
        after = self._score_cursor(page_token, fingerprint)
        async with self._db.tenant_transaction(tenant_id) as conn:
            fuzzy = await _fuzzy_query(conn, query)
            hits = await repo.search_episodes(conn, query, fuzzy, podcast_id, after, page_size + 1)
        return self._score_page(hits, page_size, fingerprint)

    def _score_cursor(
        self, token: str, fingerprint: Mapping[str, Any]
    ) -> tuple[float, uuid.UUID] | None:
        """Ranked results page by (score, id) of the last hit: the token names a
        position in the ranking, never an offset."""
        cursor = self._tokens.decode(token, fingerprint)
        return (float(cursor["s"]), uuid.UUID(cursor["id"])) if cursor else None

    def _score_page(
        self, hits: Sequence[SearchHit[Hit]], page_size: int, fingerprint: Mapping[str, Any]
    ) -> tuple[list[SearchHit[Hit]], str]:
        page, more = split_page(hits, page_size)
        token = ""
        if more:
            last = page[-1]
            token = self._tokens.encode({"s": last.score, "id": str(last.item.id)}, fingerprint)
        return list(page), token

    # Feed import

    async def import_feed(
        self,
        tenant_id: uuid.UUID,
        source: FeedSource,
        podcast_id: uuid.UUID | None,
        validate_only: bool,
        credentials: Metadata,
    ) -> ImportResult:
        with self._imports.admit(tenant_id):
            return await self._import_feed(
                tenant_id, source, podcast_id, validate_only, credentials
            )

    async def _import_feed(
        self,
        tenant_id: uuid.UUID,
        source: FeedSource,
        podcast_id: uuid.UUID | None,
        validate_only: bool,
        credentials: Metadata,
    ) -> ImportResult:
        parsed = await self._offloader.run(parse_feed, await self._feed_body(source))
        # Asked before the transaction, which holds the tenant's import lock: only an
        # import not naming its podcast can create one.
        limit = await self._quota.max_podcasts(tenant_id, credentials) if podcast_id is None else 0
        async with self._change(tenant_id) as conn:
            # Imports of one tenant take turns (here and in other catalog
            # processes): two imports of one new feed must not both create its podcast.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"catalog-import:{tenant_id}",
            )
            attempt = conn.transaction()
            await attempt.start()
            try:
                result = await self._import(conn, tenant_id, source.url, parsed, podcast_id, limit)
            except BaseException:
                await attempt.rollback()
                raise
            if validate_only:
                await attempt.rollback()
                return replace(result, warnings=cap_warnings(result.warnings))
            await attempt.commit()
            await _audit(
                conn,
                tenant_id,
                ("podcast", result.podcast.id),
                {
                    "feed_url": source.url,
                    "podcast_created": result.podcast_created,
                    "episodes_created": result.created,
                    "episodes_updated": result.updated,
                },
            )
        if self._settings.transcript_fetches_per_import > 0:
            stored, warnings = await self._fetch_transcripts(tenant_id, result.podcast.id)
            podcast = result.podcast
            if stored:
                # Transcripts add terms, and so move the keywords.
                async with self._db.tenant_transaction(tenant_id) as conn:
                    podcast = await _podcast_or_fail(conn, podcast.id)
            result = replace(result, podcast=podcast, warnings=[*result.warnings, *warnings])
        return replace(result, warnings=cap_warnings(result.warnings))

    async def _feed_body(self, source: FeedSource) -> bytes:
        limit = self._settings.feed_max_bytes
        if source.body is not None:
            if len(source.body) > limit:
                raise InvalidArgument(
                    [FieldViolation("feed_body", f"is over the {limit} byte limit")],
                    reason="FEED_TOO_LARGE",
                )
            return source.body
        if not is_http_url(source.url):
            raise InvalidArgument.field("feed_url", "must be an absolute http(s) URL")
        try:
            return (await self._fetcher.fetch(source.url, limit)).body
        except FetchError as error:
            raise _fetch_error(error, "feed", "feed_url", source.url) from None

    async def _import(
        self,
        conn: repo.Conn,
        tenant_id: uuid.UUID,
        feed_url: str,
        parsed: ParsedFeed,
        podcast_id: uuid.UUID | None,
        podcast_limit: int,
    ) -> ImportResult:
        urls = {try_normalize_media_url(item.media_url) or "" for item in parsed.items}
        owners = await repo.media_url_owners(conn, list(urls))
        current = await _podcast_for_import(conn, podcast_id, feed_url, parsed, owners)
        existing = await repo.podcast_episodes(conn, current.id) if current else []
        podcast = validate_podcast(merge_podcast(current, parsed.channel, feed_url))
        prepared = await self._offloader.run(
            prepare_episodes, podcast.id, [e for e, _, _ in existing], parsed.items, owners
        )
        plan = prepared.plan
        changes = _TermChanges()
        words = text_terms(podcast.title, podcast.description)
        if current is None:
            await _admit_podcast(conn, tenant_id, podcast_limit)
            await repo.insert_podcast(conn, tenant_id, podcast, words)
            changes.add(podcast.id, words)
        elif podcast.descriptive_fields() != current.descriptive_fields():
            old_words = await repo.podcast_text_terms(conn, podcast.id)
            await repo.update_podcast(conn, podcast, words)
            changes.add(podcast.id, term_delta(old_words, words))
        inserts: list[tuple[Episode, repo.Terms, repo.Terms]] = []
        for episode, said in zip(plan.creates, prepared.created_terms, strict=True):
            inserts.append((episode, said, {}))
            changes.add(podcast.id, said)
        stored = {episode.id: (said, spoken) for episode, said, spoken in existing}
        # Updates first: an episode moving off a URL frees it for a new one.
        for old, new in plan.updates:
            old_words, old_spoken = stored[old.id]
            episode_words = prepared.updated_terms.get(new.id)
            new_spoken: repo.Terms | None = None
            if episode_words is not None:
                changes.add(podcast.id, term_delta(old_words, episode_words))
            if old.transcript_url != new.transcript_url and old.has_transcript:
                # The text of the old file goes; the new one is fetched below.
                new, new_spoken = replace(new, transcript="", has_transcript=False), {}
                changes.add(podcast.id, term_delta(old_spoken, new_spoken))
            await repo.update_episode(conn, new, episode_words, new_spoken)
        await repo.insert_episodes(conn, tenant_id, inserts)
        for pid, delta in changes.by_podcast.items():
            await repo.apply_term_delta(conn, tenant_id, pid, delta)
        await repo.refresh_podcast_stats(conn, podcast.id)
        await repo.mark_imported(conn, podcast.id)
        await _refresh_keywords(conn, [podcast.id], podcasts_changed=current is None)
        return ImportResult(
            podcast=await _podcast_or_fail(conn, podcast.id),
            podcast_created=current is None,
            created=len(plan.creates),
            updated=len(plan.updates),
            unchanged=plan.unchanged,
            missing=plan.missing,
            skipped=parsed.skipped + plan.skipped,
            warnings=[*parsed.warnings, *plan.warnings],
        )

    # Transcripts

    async def _transcript(self, url: str) -> str:
        """The text of a transcript file named through the API; fails the request
        when it cannot be had, so a caller learns of a broken link at once."""
        try:
            fetched = await self._fetcher.fetch(url, self._settings.transcript_max_bytes)
            return transcript_text(fetched.body, fetched.content_type, fetched.url)
        except FetchError as error:
            raise _fetch_error(error, "transcript", "episode.transcript_url", url) from None
        except ValueError as error:
            raise InvalidArgument(
                [FieldViolation("episode.transcript_url", str(error))],
                reason="TRANSCRIPT_UNREADABLE",
            ) from None

    async def _fetch_transcripts(
        self, tenant_id: uuid.UUID, podcast_id: uuid.UUID
    ) -> tuple[bool, list[FeedWarning]]:
        """Fetches podcast:transcript files the podcast's episodes lack, newest
        first, a bounded number per import; a later import continues.

        After the import's own transaction: a transcript that cannot be had is a
        warning, never a reason to lose the import. Says whether any was stored.
        """
        limit = self._settings.transcript_fetches_per_import
        async with self._db.tenant_transaction(tenant_id) as conn:
            wanted = await repo.episodes_lacking_transcripts(conn, podcast_id, limit + 1)
        warnings: list[FeedWarning] = []
        if len(wanted) > limit:
            warnings.append(
                FeedWarning("", f"more than {limit} transcripts to fetch; the next import goes on")
            )
            wanted = wanted[:limit]
        if not wanted:
            return False, warnings
        gate = asyncio.Semaphore(_TRANSCRIPT_CONCURRENCY)
        texts: dict[uuid.UUID, tuple[str, str]] = {}

        async def one(episode_id: uuid.UUID, guid: str, url: str) -> None:
            async with gate:
                try:
                    fetched = await self._fetcher.fetch(url, self._settings.transcript_max_bytes)
                    text = transcript_text(fetched.body, fetched.content_type, fetched.url)
                except (FetchError, ValueError) as error:
                    warnings.append(FeedWarning(guid, f"transcript {url}: {error}"))
                    return
            if text:
                texts[episode_id] = (url, text)

        try:
            async with asyncio.timeout(self._settings.transcript_budget_s):
                await asyncio.gather(*(one(*entry) for entry in wanted))
        except TimeoutError:
            warnings.append(
                FeedWarning("", "transcript fetching ran out of time; the next import goes on")
            )
        if texts:
            await self._store_transcripts(tenant_id, podcast_id, texts)
        return bool(texts), warnings

    async def _store_transcripts(
        self,
        tenant_id: uuid.UUID,
        podcast_id: uuid.UUID,
        texts: Mapping[uuid.UUID, tuple[str, str]],
    ) -> None:
        delta: Counter[str] = Counter()
        async with self._change(tenant_id) as conn:
            await _lock_podcast(conn, podcast_id)
            for episode_id, (url, text) in texts.items():
                spoken = transcript_terms(text)
                old = await repo.set_transcript(conn, episode_id, url, text, spoken)
                if old is not None:
                    add_terms(delta, term_delta(old, spoken))
            await repo.apply_term_delta(conn, tenant_id, podcast_id, delta)
            await _refresh_keywords(conn, [podcast_id])


def _fetch_error(error: FetchError, what: str, field_name: str, url: str) -> DomainError:
    """FEED_/TRANSCRIPT_ + TOO_LARGE, ADDRESS_NOT_ALLOWED or UNREACHABLE.

    An unreachable document is FAILED_PRECONDITION, not UNAVAILABLE: the catalog
    is fine and retrying it changes nothing until the remote host recovers, and
    the gateway would count UNAVAILABLE against the catalog's own health.
    """
    prefix = what.upper()
    if error.failure is FetchFailure.TOO_LARGE:
        return InvalidArgument(
            [FieldViolation(field_name, f"the {what} {error.message}")],
            reason=f"{prefix}_TOO_LARGE",
        )
    if error.failure is FetchFailure.ADDRESS_NOT_ALLOWED:
        return InvalidArgument(
            [FieldViolation(field_name, f"the {what}'s host is not a public address")],
            reason=f"{prefix}_ADDRESS_NOT_ALLOWED",
        )
    return FailedPrecondition(
        f"the {what} at {url} could not be fetched: {error.message}",
        reason=f"{prefix}_UNREACHABLE",
        metadata={"url": url, "cause": error.cause},
    )


def _check_filter(where: PodcastFilter) -> None:
    v = Violations()
    if where.language:
        v.check(is_language(where.language), "language", 'must be a language tag such as "en"')
    v.check(len(where.category) <= 200, "category", "must be at most 200 characters")
    v.raise_if_any()


def _check_query(query: str) -> str:
    query = " ".join(query.split())
    v = Violations()
    v.check(bool(query), "query", "is required")
    v.check(
        len(query) <= MAX_QUERY_LENGTH, "query", f"must be at most {MAX_QUERY_LENGTH} characters"
    )
    v.raise_if_any()
    return query


async def _audit(
    conn: repo.Conn, tenant_id: uuid.UUID, resource: tuple[str, uuid.UUID], details: dict[str, Any]
) -> None:
    """The change's audit record, in its transaction (services.shared.audit_outbox)."""
    await audit_outbox.record(conn, repo.AUDIT, tenant_id, (resource[0], str(resource[1])), details)


async def _fuzzy_query(conn: repo.Conn, query: str) -> str | None:
    words = query_words(query)
    similar = await repo.similar_terms(conn, [w for w in words if correctable(w)])
    return fuzzy_tsquery(
        words, {word: spelling_alternatives(found) for word, found in similar.items()}
    )


async def _podcast_or_fail(conn: repo.Conn, podcast_id: uuid.UUID) -> Podcast:
    podcast = await repo.get_podcast(conn, podcast_id)
    if podcast is None:
        raise NotFound("podcast", str(podcast_id))
    return podcast


async def _admit_podcast(conn: repo.Conn, tenant_id: uuid.UUID, limit: int) -> None:
    """Refuses a new podcast past the tenant's quota (0: no limit)."""
    if limit <= 0:
        return
    # Creations of one tenant's podcasts take turns until commit (here and in other
    # catalog processes), so two of them cannot both count the last free place.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        f"catalog-podcasts:{tenant_id}",
    )
    if await repo.count_podcasts(conn, tenant_id) >= limit:
        raise ResourceExhausted(
            f"the tenant's plan allows {limit} podcasts; delete one or change the plan",
            reason="PODCAST_QUOTA_EXCEEDED",
            metadata={"limit": str(limit)},
        )


async def _lock_podcast(conn: repo.Conn, podcast_id: uuid.UUID) -> Podcast:
    podcast = await repo.get_podcast(conn, podcast_id, for_update=True)
    if podcast is None:
        raise NotFound("podcast", str(podcast_id))
    return podcast


async def _podcast_for_import(
    conn: repo.Conn,
    podcast_id: uuid.UUID | None,
    feed_url: str,
    parsed: ParsedFeed,
    owners: Mapping[str, tuple[uuid.UUID, uuid.UUID]],
) -> Podcast | None:
    """The podcast named, else the one known by the feed's URLs or podcast:guid;
    None for a new one."""
    if podcast_id is not None:
        return await _lock_podcast(conn, podcast_id)
    urls = [u for u in (feed_url, *parsed.channel.self_urls) if u]
    guid = parsed.channel.podcast_guid
    if urls or guid:
        return await repo.find_podcast_for_feed(conn, urls, guid)
    # A feed body that names itself nowhere is recognised by its files, when
    # one podcast holds most of them.
    holders = Counter(pid for _, pid in owners.values())
    if holders:
        holder, held = holders.most_common(1)[0]
        if held * 2 > len(parsed.items):
            return await _lock_podcast(conn, holder)
    return None


async def _refresh_keywords(
    conn: repo.Conn, podcast_ids: Iterable[uuid.UUID] = (), *, podcasts_changed: bool = False
) -> None:
    """Recomputes the keywords of the podcasts whose terms changed.

    A podcast added or removed moves every podcast's IDF, so then all of a small
    catalog is recomputed too. In a large one the shift is below 1% (about
    1/N of an IDF that is at least 1), not worth N recomputations per podcast
    created: those podcasts catch up at their next change.
    """
    ids = list(dict.fromkeys(podcast_ids))
    if podcasts_changed:
        everyone = await repo.all_podcast_ids(conn)
        if len(everyone) <= FULL_REFRESH_MAX_PODCASTS:
            ids = everyone
    if not ids:
        return
    documents, counts, df = await repo.keyword_inputs(conn, ids, KEYWORD_CANDIDATES)
    await repo.set_keywords(conn, {p: rank_keywords(counts[p], df, documents) for p in ids})
