"""Catalog domain: podcasts, episodes, ad slots and their media facts; the rules,
independent of gRPC and SQL."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Generic, TypeVar

from services.catalog.urls import MAX_URL_LENGTH, is_http_url, normalize_media_url
from services.shared.validation import Violations, is_email

MAX_TITLE_LENGTH = 1000
MAX_NAME_LENGTH = 1000
MAX_DESCRIPTION_LENGTH = 100_000
MAX_GUID_LENGTH = 2000
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 100
MAX_AD_SLOTS = 50
# A full transcript of several hours; larger texts are cut at import.
MAX_TRANSCRIPT_LENGTH = 500_000
# Below this an ad cannot even be a sting; it also guarantees a derived byte
# range spans at least one byte at any real bitrate.
MIN_AD_DURATION_MS = 1000
MAX_INT32 = 2**31 - 1
T = TypeVar("T")

# BCP 47 as podcast feeds use it: a language, then optional script/region/variants.
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*$")

# Apple Podcasts categories (2019 list onwards), for canonical spelling. Names
# outside it are kept as given: Apple adds categories, and feeds predate them.
APPLE_CATEGORIES: Mapping[str, tuple[str, ...]] = {
    "Arts": ("Books", "Design", "Fashion & Beauty", "Food", "Performing Arts", "Visual Arts"),
    "Business": (
        "Careers", "Entrepreneurship", "Investing", "Management", "Marketing", "Non-Profit",
    ),
    "Comedy": ("Comedy Interviews", "Improv", "Stand-Up"),
    "Education": ("Courses", "How To", "Language Learning", "Self-Improvement"),
    "Fiction": ("Comedy Fiction", "Drama", "Science Fiction"),
    "Government": (),
    "History": (),
    "Health & Fitness": (
        "Alternative Health", "Fitness", "Medicine", "Mental Health", "Nutrition", "Sexuality",
    ),
    "Kids & Family": ("Education for Kids", "Parenting", "Pets & Animals", "Stories for Kids"),
    "Leisure": (
        "Animation & Manga", "Automotive", "Aviation", "Crafts", "Games", "Hobbies",
        "Home & Garden", "Video Games",
    ),
    "Music": ("Music Commentary", "Music History", "Music Interviews"),
    "News": (
        "Business News", "Daily News", "Entertainment News", "News Commentary", "Politics",
        "Sports News", "Tech News",
    ),
    "Religion & Spirituality": (
        "Buddhism", "Christianity", "Hinduism", "Islam", "Judaism", "Religion", "Spirituality",
    ),
    "Science": (
        "Astronomy", "Chemistry", "Earth Sciences", "Life Sciences", "Mathematics",
        "Natural Sciences", "Nature", "Physics", "Social Sciences",
    ),
    "Society & Culture": (
        "Documentary", "Personal Journals", "Philosophy", "Places & Travel", "Relationships",
    ),
    "Sports": (
        "Baseball", "Basketball", "Cricket", "Fantasy Sports", "Football", "Golf", "Hockey",
        "Rugby", "Running", "Soccer", "Swimming", "Tennis", "Volleyball", "Wilderness",
        "Wrestling",
    ),
    "Technology": (),
    "True Crime": (),
    "TV & Film": ("After Shows", "Film History", "Film Interviews", "Film Reviews", "TV Reviews"),
}  # fmt: skip
_CANONICAL_CATEGORIES = {
    name.lower(): name
    for parent, children in APPLE_CATEGORIES.items()
    for name in (parent, *(f"{parent}/{child}" for child in children))
}


class PodcastType(enum.IntEnum):
    UNSPECIFIED = 0
    EPISODIC = 1
    SERIAL = 2


class EpisodeType(enum.IntEnum):
    UNSPECIFIED = 0
    FULL = 1
    TRAILER = 2
    BONUS = 3


class AdPosition(enum.IntEnum):
    UNSPECIFIED = 0
    PRE_ROLL = 1
    MID_ROLL = 2
    POST_ROLL = 3


class AdInsertion(enum.IntEnum):
    UNSPECIFIED = 0
    DYNAMIC = 1
    BAKED_IN = 2


@dataclass(frozen=True)
class Keyword:
    text: str
    weight: float


@dataclass(frozen=True)
class Podcast:
    id: uuid.UUID
    title: str
    author: str = ""
    description: str = ""
    categories: tuple[str, ...] = ()
    language: str = ""
    feed_url: str = ""
    artwork_url: str = ""
    website_url: str = ""
    owner_name: str = ""
    owner_email: str = ""
    explicit: bool = False
    podcast_type: PodcastType = PodcastType.UNSPECIFIED
    podcast_guid: str = ""
    keywords: tuple[Keyword, ...] = ()
    episode_count: int = 0
    latest_publish_at: datetime | None = None
    last_import_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def descriptive_fields(self) -> tuple[object, ...]:
        """What a caller or a feed sets; two podcasts equal here need no write."""
        return tuple(getattr(self, name) for name in PODCAST_UPDATABLE)


@dataclass(frozen=True)
class AdSlot:
    """An ad break. `given_*` are the byte offsets a caller stated; start_byte
    and end_byte are the effective range, derived where nothing was given."""

    id: uuid.UUID | None
    position: AdPosition
    insertion: AdInsertion
    start_offset_ms: int
    duration_ms: int
    given_start_byte: int | None = None
    given_end_byte: int | None = None
    start_byte: int | None = None
    end_byte: int | None = None

    @property
    def byte_range_derived(self) -> bool:
        known = self.start_byte is not None and self.end_byte is not None
        return known and None in (self.given_start_byte, self.given_end_byte)


@dataclass(frozen=True)
class Episode:
    id: uuid.UUID
    podcast_id: uuid.UUID
    guid: str
    title: str
    media_url: str
    description: str = ""
    publish_at: datetime | None = None
    normalized_media_url: str = ""
    media_type: str = ""
    media_size_bytes: int = 0
    duration_ms: int | None = None
    bitrate_bps: int = 0
    bitrate_derived: bool = False
    id3_size_bytes: int | None = None
    season_number: int = 0
    episode_number: int = 0
    episode_type: EpisodeType = EpisodeType.UNSPECIFIED
    explicit: bool = False
    artwork_url: str = ""
    # Write-only text: None means "not loaded / not changing"; has_transcript
    # says whether one is stored.
    transcript: str | None = None
    has_transcript: bool = False
    transcript_url: str = ""
    ad_slots: tuple[AdSlot, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def stored_fields(self) -> tuple[object, ...]:
        """Everything a write stores; two episodes equal here need no write."""
        return tuple(
            getattr(self, name) for name in (*EPISODE_STORED, "normalized_media_url", "ad_slots")
        )


@dataclass(frozen=True)
class EpisodeMedia:
    """What download and ad counting need to know about an episode's file."""

    episode_id: uuid.UUID
    podcast_id: uuid.UUID
    media_url: str
    normalized_media_url: str
    media_size_bytes: int
    id3_size_bytes: int | None
    bitrate_bps: int
    duration_ms: int | None
    publish_at: datetime | None
    ad_slots: tuple[AdSlot, ...]
    updated_at: datetime


@dataclass(frozen=True)
class PodcastFilter:
    category: str = ""
    language: str = ""
    feed_url: str = ""


@dataclass(frozen=True)
class EpisodeFilter:
    publish_start: datetime | None = None
    publish_end: datetime | None = None
    episode_type: EpisodeType = EpisodeType.UNSPECIFIED
    season_number: int = 0


@dataclass(frozen=True)
class SearchHit(Generic[T]):
    item: T
    score: float


PODCAST_UPDATABLE = (
    "title",
    "author",
    "description",
    "categories",
    "language",
    "feed_url",
    "artwork_url",
    "website_url",
    "owner_name",
    "owner_email",
    "explicit",
    "podcast_type",
    "podcast_guid",
)
# Paths of the contract, in the order a mask is applied; bitrate_derived and
# the byte ranges follow from them.
EPISODE_UPDATABLE = (
    "title",
    "description",
    "publish_time",
    "media_url",
    "media_type",
    "media_size_bytes",
    "duration",
    "bitrate_bps",
    "id3_size_bytes",
    "season_number",
    "episode_number",
    "episode_type",
    "explicit",
    "artwork_url",
    "transcript",
    "transcript_url",
    "ad_slots",
)
_EPISODE_FIELD_FOR_PATH = {"publish_time": "publish_at", "duration": "duration_ms"}
EPISODE_STORED = (
    *(
        _EPISODE_FIELD_FOR_PATH.get(path, path)
        for path in EPISODE_UPDATABLE
        if path not in ("transcript", "ad_slots")
    ),
    "bitrate_derived",
    "guid",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


# Normalisation


def canonical_language(tag: str) -> str:
    """BCP 47 casing: "EN-us" -> "en-US", "zh-hant-tw" -> "zh-Hant-TW"."""
    parts = tag.strip().replace("_", "-").split("-")
    out = [parts[0].lower()]
    for part in parts[1:]:
        if len(part) == 2 and part.isalpha():
            out.append(part.upper())
        elif len(part) == 4 and part.isalpha():
            out.append(part.title())
        else:
            out.append(part.lower())
    return "-".join(out) if tag.strip() else ""


def is_language(tag: str) -> bool:
    return bool(_LANGUAGE.fullmatch(tag))


def canonical_category(name: str) -> str:
    """ "business / marketing" -> "Business/Marketing"; unknown names keep their case."""
    cleaned = "/".join(part.strip() for part in name.split("/"))
    return _CANONICAL_CATEGORIES.get(cleaned.lower(), cleaned)


def is_category(name: str) -> bool:
    parts = name.split("/")
    return len(parts) <= 2 and all(p.strip() for p in parts) and len(name) <= MAX_CATEGORY_LENGTH


def category_keys(categories: Iterable[str]) -> list[str]:
    """Each category and its parent in lower case, for filtering by either."""
    keys: dict[str, None] = {}
    for name in categories:
        lowered = name.lower()
        keys[lowered] = None
        keys[lowered.split("/", 1)[0]] = None
    return list(keys)


def normalize_podcast(podcast: Podcast) -> Podcast:
    return replace(
        podcast,
        title=podcast.title.strip(),
        author=podcast.author.strip(),
        categories=tuple(dict.fromkeys(canonical_category(c) for c in podcast.categories)),
        language=canonical_language(podcast.language),
        feed_url=podcast.feed_url.strip(),
        artwork_url=podcast.artwork_url.strip(),
        website_url=podcast.website_url.strip(),
        owner_name=podcast.owner_name.strip(),
        owner_email=podcast.owner_email.strip(),
        podcast_guid=podcast.podcast_guid.strip(),
    )


# Validation


def _check_text(v: Violations, value: str, name: str, limit: int, *, required: bool) -> None:
    if required:
        v.check(bool(value.strip()), name, "is required")
    v.check(len(value) <= limit, name, f"must be at most {limit} characters")


def _check_url(v: Violations, value: str, name: str) -> None:
    if value:
        v.check(
            is_http_url(value),
            name,
            f"must be an absolute http(s) URL of at most {MAX_URL_LENGTH} characters",
        )


def check_podcast(v: Violations, podcast: Podcast, prefix: str = "podcast") -> None:
    _check_text(v, podcast.title, f"{prefix}.title", MAX_TITLE_LENGTH, required=True)
    for name in ("author", "owner_name", "podcast_guid"):
        _check_text(v, getattr(podcast, name), f"{prefix}.{name}", MAX_NAME_LENGTH, required=False)
    _check_text(
        v, podcast.description, f"{prefix}.description", MAX_DESCRIPTION_LENGTH, required=False
    )
    v.check(
        len(podcast.categories) <= MAX_CATEGORIES,
        f"{prefix}.categories",
        f"must have at most {MAX_CATEGORIES} entries",
    )
    for i, category in enumerate(podcast.categories):
        v.check(
            is_category(category),
            f"{prefix}.categories[{i}]",
            'must be a category name or "Parent/Subcategory", e.g. "Business/Marketing"',
        )
    if podcast.language:
        v.check(
            is_language(podcast.language),
            f"{prefix}.language",
            'must be a BCP 47 language tag such as "en" or "pt-BR"',
        )
    for name in ("feed_url", "artwork_url", "website_url"):
        _check_url(v, getattr(podcast, name), f"{prefix}.{name}")
    if podcast.owner_email:
        v.check(is_email(podcast.owner_email), f"{prefix}.owner_email", "must be an e-mail address")


def validate_podcast(podcast: Podcast) -> Podcast:
    podcast = normalize_podcast(podcast)
    v = Violations()
    check_podcast(v, podcast)
    v.raise_if_any()
    return podcast


def _check_slots(v: Violations, episode: Episode, prefix: str) -> None:
    name = f"{prefix}.ad_slots"
    v.check(len(episode.ad_slots) <= MAX_AD_SLOTS, name, f"must have at most {MAX_AD_SLOTS} slots")
    slots = episode.ad_slots
    previous_end: int | None = None
    for i in sorted(range(len(slots)), key=lambda i: slots[i].start_offset_ms):
        slot, at = slots[i], f"{name}[{i}]"
        v.check(slot.position is not AdPosition.UNSPECIFIED, f"{at}.position", "is required")
        v.check(slot.insertion is not AdInsertion.UNSPECIFIED, f"{at}.insertion", "is required")
        v.check(slot.start_offset_ms >= 0, f"{at}.start_offset", "must not be negative")
        v.check(
            slot.duration_ms >= MIN_AD_DURATION_MS,
            f"{at}.duration",
            f"must be at least {MIN_AD_DURATION_MS // 1000} second",
        )
        end_ms = slot.start_offset_ms + slot.duration_ms
        # Against a valid duration only; a negative one has its own violation.
        if episode.duration_ms is not None and episode.duration_ms >= 0:
            v.check(
                end_ms <= episode.duration_ms,
                f"{at}.duration",
                "must end within the episode's duration",
            )
        if previous_end is not None:
            v.check(
                slot.start_offset_ms >= previous_end,
                f"{at}.start_offset",
                "must not overlap the slot before it",
            )
        previous_end = end_ms
        for attr in ("given_start_byte", "given_end_byte"):
            value = getattr(slot, attr)
            label = f"{at}.{attr.removeprefix('given_')}"
            if value is None:
                continue
            v.check(value >= 0, label, "must not be negative")
            if episode.media_size_bytes:
                v.check(value < episode.media_size_bytes, label, "must lie within the media file")
        if slot.given_start_byte is not None and slot.given_end_byte is not None:
            v.check(
                slot.given_end_byte >= slot.given_start_byte,
                f"{at}.end_byte",
                "must not be before start_byte (the range is inclusive)",
            )


def check_episode(v: Violations, episode: Episode, prefix: str = "episode") -> None:
    _check_text(v, episode.title, f"{prefix}.title", MAX_TITLE_LENGTH, required=True)
    _check_text(v, episode.guid, f"{prefix}.guid", MAX_GUID_LENGTH, required=False)
    _check_text(
        v, episode.description, f"{prefix}.description", MAX_DESCRIPTION_LENGTH, required=False
    )
    _check_text(v, episode.media_type, f"{prefix}.media_type", MAX_NAME_LENGTH, required=False)
    if v.check(bool(episode.media_url.strip()), f"{prefix}.media_url", "is required"):
        _check_url(v, episode.media_url, f"{prefix}.media_url")
    _check_url(v, episode.artwork_url, f"{prefix}.artwork_url")
    _check_url(v, episode.transcript_url, f"{prefix}.transcript_url")
    v.check(episode.media_size_bytes >= 0, f"{prefix}.media_size_bytes", "must not be negative")
    if episode.duration_ms is not None:
        v.check(episode.duration_ms >= 0, f"{prefix}.duration", "must not be negative")
    v.check(episode.bitrate_bps >= 0, f"{prefix}.bitrate_bps", "must not be negative")
    if episode.id3_size_bytes is not None:
        v.check(episode.id3_size_bytes >= 0, f"{prefix}.id3_size_bytes", "must not be negative")
        if episode.media_size_bytes:
            v.check(
                episode.id3_size_bytes < episode.media_size_bytes,
                f"{prefix}.id3_size_bytes",
                "must be smaller than media_size_bytes",
            )
    for name in ("season_number", "episode_number"):
        v.check(getattr(episode, name) >= 0, f"{prefix}.{name}", "must not be negative")
    if episode.transcript is not None:
        _check_text(
            v, episode.transcript, f"{prefix}.transcript", MAX_TRANSCRIPT_LENGTH, required=False
        )
    _check_slots(v, episode, prefix)


# Media facts


def derive_bitrate(size_bytes: int, id3_bytes: int | None, duration_ms: int | None) -> int:
    """(size - ID3 tag) * 8 / duration in bits per second; 0 when it cannot be known.

    An unknown ID3 size counts as none: the tag is a small part of a file, so the
    error stays small, unlike the byte ranges below where it would shift every ad.
    """
    audio_bytes = size_bytes - (id3_bytes or 0)
    if audio_bytes <= 0 or not duration_ms or duration_ms <= 0:
        return 0
    bitrate = round(audio_bytes * 8 * 1000 / duration_ms)
    return bitrate if 0 < bitrate <= MAX_INT32 else 0


def _offset_bytes(offset_ms: int, bitrate_bps: int) -> int:
    return offset_ms * bitrate_bps // 8000


def derive_byte_range(
    slot: AdSlot, bitrate_bps: int, id3_bytes: int | None, size_bytes: int
) -> tuple[int | None, int | None]:
    """The slot's inclusive byte range: what was given, the rest derived.

    Without a given start, both ends come from playing time (start and end
    offsets, rounded down), so adjacent slots never share a byte; that needs
    the ID3 size, which shifts every ad by the length of the tag. A given start
    only needs the bitrate for its end. A range that would start past the end
    of a file of known size stays unknown; one that would end past it is cut
    at the last byte.
    """
    given = (slot.given_start_byte, slot.given_end_byte)
    if bitrate_bps <= 0 or None not in given:
        return given
    if slot.given_start_byte is None:
        if id3_bytes is None:
            return given
        start = id3_bytes + _offset_bytes(slot.start_offset_ms, bitrate_bps)
        end_offset_ms = slot.start_offset_ms + slot.duration_ms
        end = id3_bytes + _offset_bytes(end_offset_ms, bitrate_bps) - 1
    else:
        start = slot.given_start_byte
        end = start + _offset_bytes(slot.duration_ms, bitrate_bps) - 1
    if slot.given_end_byte is not None:
        end = slot.given_end_byte
    if size_bytes:
        if start >= size_bytes:
            return given
        end = min(end, size_bytes - 1)
    if end < start:
        return given
    return start, end


def with_media_facts(episode: Episode) -> Episode:
    """The episode with its derived facts filled in: bitrate, byte ranges, URL key."""
    bitrate, derived = episode.bitrate_bps, episode.bitrate_derived
    if derived or bitrate == 0:
        bitrate = derive_bitrate(
            episode.media_size_bytes, episode.id3_size_bytes, episode.duration_ms
        )
        derived = bitrate > 0
    slots = []
    for slot in sorted(episode.ad_slots, key=lambda s: s.start_offset_ms):
        start, end = derive_byte_range(
            slot, bitrate, episode.id3_size_bytes, episode.media_size_bytes
        )
        slots.append(replace(slot, id=slot.id or uuid.uuid4(), start_byte=start, end_byte=end))
    return replace(
        episode,
        bitrate_bps=bitrate,
        bitrate_derived=derived,
        normalized_media_url=normalize_media_url(episode.media_url),
        ad_slots=tuple(slots),
    )


def normalize_episode(episode: Episode) -> Episode:
    return replace(
        episode,
        title=episode.title.strip(),
        guid=episode.guid.strip(),
        media_url=episode.media_url.strip(),
        media_type=episode.media_type.strip(),
        artwork_url=episode.artwork_url.strip(),
        transcript_url=episode.transcript_url.strip(),
    )


def validate_episode(episode: Episode, prefix: str = "episode") -> Episode:
    """The episode normalised and with its media facts, or InvalidArgument."""
    episode = normalize_episode(episode)
    v = Violations()
    check_episode(v, episode, prefix)
    v.raise_if_any()
    return with_media_facts(episode)


def merge_slots(
    current: Sequence[AdSlot], requested: Sequence[AdSlot], prefix: str = "episode.ad_slots"
) -> tuple[AdSlot, ...]:
    """The slot list an update asks for (AdSlot.id semantics of the contract).

    A kept slot whose byte offsets come back exactly as they were derived stays
    derived: a client that read an episode and sends its slots back unchanged
    must not freeze ranges that should follow later changes to the media facts.
    """
    by_id = {slot.id: slot for slot in current}
    v = Violations()
    seen: set[uuid.UUID] = set()
    merged: list[AdSlot] = []
    for i, slot in enumerate(requested):
        if slot.id is None:
            merged.append(slot)
            continue
        v.check(slot.id not in seen, f"{prefix}[{i}].id", "appears twice")
        seen.add(slot.id)
        old = by_id.get(slot.id)
        if not v.check(old is not None, f"{prefix}[{i}].id", "is not a slot of this episode"):
            continue
        assert old is not None
        start, end = slot.given_start_byte, slot.given_end_byte
        if old.given_start_byte is None and start == old.start_byte:
            start = None
        if old.given_end_byte is None and end == old.end_byte:
            end = None
        merged.append(replace(slot, given_start_byte=start, given_end_byte=end))
    v.raise_if_any()
    return tuple(merged)


def new_slots_only(slots: Sequence[AdSlot], prefix: str = "episode.ad_slots") -> None:
    v = Violations()
    for i, slot in enumerate(slots):
        v.check(slot.id is None, f"{prefix}[{i}].id", "is assigned by the server; leave it empty")
    v.raise_if_any()


def apply_episode_update(current: Episode, patch: Episode, paths: set[str]) -> Episode:
    """`current` with the masked fields of `patch`; validated, facts re-derived."""
    changes: dict[str, object] = {}
    for path in paths:
        if path == "ad_slots":
            changes["ad_slots"] = merge_slots(current.ad_slots, patch.ad_slots)
        elif path == "bitrate_bps":
            # Clearing the bitrate hands it back to derivation.
            changes["bitrate_bps"] = patch.bitrate_bps
            changes["bitrate_derived"] = patch.bitrate_bps == 0
        else:
            name = _EPISODE_FIELD_FOR_PATH.get(path, path)
            changes[name] = getattr(patch, name)
    if "transcript" in changes:
        transcript = changes["transcript"] or ""
        changes["transcript"] = transcript
        changes["has_transcript"] = bool(transcript)
    return validate_episode(replace(current, **changes))  # type: ignore[arg-type]


def apply_podcast_update(current: Podcast, patch: Podcast, paths: set[str]) -> Podcast:
    changes = {name: getattr(patch, name) for name in paths}
    return validate_podcast(replace(current, **changes))


def episode_media(episode: Episode) -> EpisodeMedia:
    assert episode.updated_at is not None
    return EpisodeMedia(
        episode_id=episode.id,
        podcast_id=episode.podcast_id,
        media_url=episode.media_url,
        normalized_media_url=episode.normalized_media_url,
        media_size_bytes=episode.media_size_bytes,
        id3_size_bytes=episode.id3_size_bytes,
        bitrate_bps=episode.bitrate_bps,
        duration_ms=episode.duration_ms,
        publish_at=episode.publish_at,
        ad_slots=episode.ad_slots,
        updated_at=episode.updated_at,
    )
