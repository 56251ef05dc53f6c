"""Reading podcast feeds: RSS 2.0 with the iTunes and Podcasting 2.0 namespaces.

feedparser does the hard part (encodings, broken markup, a hundred date
formats). It is lossy on a few podcast details, so those are read from the XML
tree when the document is well-formed: it lets itunes:owner's name overwrite
itunes:author, flattens nested itunes:category, reads itunes:explicit "true"
(the spelling Apple now documents) as unknown, and keeps only the last of
several podcast:transcript elements.
"""

from __future__ import annotations

import calendar
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import feedparser

from services.catalog.domain import (
    MAX_CATEGORIES,
    MAX_DESCRIPTION_LENGTH,
    MAX_GUID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_TITLE_LENGTH,
    MAX_TRANSCRIPT_LENGTH,
    EpisodeType,
    PodcastType,
    canonical_category,
    canonical_language,
    is_category,
    is_language,
)
from services.catalog.text import plain_text
from services.catalog.urls import is_http_url
from services.shared.errors import InvalidArgument
from services.shared.validation import is_email

MAX_WARNINGS = 100

_ITUNES_NS = "itunes.com/dtds/podcast-1.0.dtd"
_PODCAST_NS = ("podcastindex.org/namespace/1.0", "podcastindex-org/podcast-namespace")
_EXPLICIT = {
    "yes": True,
    "true": True,
    "explicit": True,
    "no": False,
    "false": False,
    "clean": False,
}
_EPISODE_TYPES = {
    "full": EpisodeType.FULL,
    "trailer": EpisodeType.TRAILER,
    "bonus": EpisodeType.BONUS,
}
_PODCAST_TYPES = {"episodic": PodcastType.EPISODIC, "serial": PodcastType.SERIAL}
# What a PostgreSQL text column cannot hold: NUL, and unpaired surrogates (no
# UTF-8 form), which feedparser returns for a raw NUL byte or "&#0;".
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# A numeric character reference, on the raw bytes: feedparser raises (rather
# than replaces) on one naming a surrogate, so those are changed before it runs.
_CHAR_REF = re.compile(rb"&#(?:[xX]([0-9a-fA-F]{1,8})|([0-9]{1,10}));")
_SECONDS = re.compile(r"^(\d+)(?:\.(\d+))?$")
_CLOCK = re.compile(r"^(\d+):(\d{1,2})(?::(\d{1,2}))?(?:\.(\d+))?$")
# Cleanest text first: plain text and JSON segments need no cue cleaning, HTML the most.
_TRANSCRIPT_PREFERENCE = (
    "text/plain",
    "application/json",
    "text/vtt",
    "application/x-subrip",
    "application/srt",
    "text/html",
)


@dataclass(frozen=True)
class FeedWarning:
    # The item's GUID (or title when it has none); empty for the channel.
    item: str
    message: str


@dataclass(frozen=True)
class FeedChannel:
    title: str
    author: str = ""
    description: str = ""
    categories: tuple[str, ...] = ()
    language: str = ""
    website_url: str = ""
    artwork_url: str = ""
    owner_name: str = ""
    owner_email: str = ""
    explicit: bool | None = None
    podcast_type: PodcastType | None = None
    podcast_guid: str = ""
    # Where the feed says it lives (atom:link rel=self, itunes:new-feed-url).
    self_urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeedItem:
    """One item as the feed states it; None means the feed does not say."""

    guid: str
    # False when the item has no GUID and `guid` is its enclosure URL.
    has_guid: bool
    title: str
    media_url: str
    description: str = ""
    publish_at: datetime | None = None
    media_type: str = ""
    media_size_bytes: int | None = None
    duration_ms: int | None = None
    season_number: int | None = None
    episode_number: int | None = None
    episode_type: EpisodeType | None = None
    explicit: bool | None = None
    artwork_url: str = ""
    transcript_url: str = ""


@dataclass
class ParsedFeed:
    channel: FeedChannel
    items: list[FeedItem]
    skipped: int = 0
    warnings: list[FeedWarning] = field(default_factory=list)


class _Warnings:
    def __init__(self) -> None:
        self.items: list[FeedWarning] = []

    def add(self, item: str, message: str) -> None:
        self.items.append(FeedWarning(item, message))


def cap_warnings(warnings: list[FeedWarning]) -> list[FeedWarning]:
    """At most MAX_WARNINGS, the last one saying how many more there were."""
    if len(warnings) <= MAX_WARNINGS:
        return warnings
    more = len(warnings) - MAX_WARNINGS + 1
    return [*warnings[: MAX_WARNINGS - 1], FeedWarning("", f"{more} more warnings not shown")]


def parse_duration(text: str) -> int | None:
    """Milliseconds of "HH:MM:SS", "MM:SS" or seconds (fractions allowed);
    None when empty, ValueError when it is none of these."""
    value = text.strip()
    if not value:
        return None
    seconds = _SECONDS.fullmatch(value)
    if seconds:
        return int(seconds[1]) * 1000 + _fraction_ms(seconds[2])
    clock = _CLOCK.fullmatch(value)
    if clock is None:
        raise ValueError(f"unparseable duration {value!r}")
    first, second, third, fraction = clock.groups()
    if third is None:
        hours, minutes, secs = 0, int(first), int(second)
    else:
        hours, minutes, secs = int(first), int(second), int(third)
        if minutes >= 60:
            raise ValueError(f"unparseable duration {value!r}: minutes past 59")
    if secs >= 60:
        raise ValueError(f"unparseable duration {value!r}: seconds past 59")
    return ((hours * 60 + minutes) * 60 + secs) * 1000 + _fraction_ms(fraction)


def _fraction_ms(digits: str | None) -> int:
    return int((digits or "0")[:3].ljust(3, "0"))


def parse_explicit(text: str | None) -> bool | None:
    return _EXPLICIT.get((text or "").strip().lower())


# The XML tree, for what feedparser loses


def _ns_local(tag: object) -> tuple[str, str]:
    if not isinstance(tag, str) or not tag.startswith("{"):
        return "", str(tag)
    ns, _, local = tag[1:].partition("}")
    return ns.lower(), local


def _is_itunes(element: ET.Element, local: str) -> bool:
    ns, name = _ns_local(element.tag)
    return name == local and _ITUNES_NS in ns


def _is_podcast(element: ET.Element, local: str) -> bool:
    ns, name = _ns_local(element.tag)
    return name == local and any(p in ns for p in _PODCAST_NS)


def _children(element: ET.Element, test: Any, local: str) -> Iterator[ET.Element]:
    return (child for child in element if test(child, local))


@dataclass
class _TreeItem:
    explicit: str | None = None
    transcripts: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Tree:
    author: str | None = None
    explicit: str | None = None
    categories: list[str] | None = None
    new_feed_url: str = ""
    items: dict[str, _TreeItem] = field(default_factory=dict)


def _read_tree(body: bytes) -> _Tree | None:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    channel = next((e for e in root.iter() if _ns_local(e.tag)[1] == "channel"), None)
    if channel is None:
        return None
    tree = _Tree()
    author = next(_children(channel, _is_itunes, "author"), None)
    tree.author = (author.text or "").strip() if author is not None else None
    explicit = next(_children(channel, _is_itunes, "explicit"), None)
    tree.explicit = explicit.text if explicit is not None else None
    new_url = next(_children(channel, _is_itunes, "new-feed-url"), None)
    tree.new_feed_url = (new_url.text or "").strip() if new_url is not None else ""
    categories: list[str] = []
    for parent in _children(channel, _is_itunes, "category"):
        name = (parent.get("text") or "").strip()
        subs = [
            (sub.get("text") or "").strip() for sub in _children(parent, _is_itunes, "category")
        ]
        subs = [s for s in subs if s]
        if name:
            categories.extend([f"{name}/{s}" for s in subs] or [name])
    tree.categories = categories
    for element in channel.findall("item"):
        item = _TreeItem()
        explicit = next(_children(element, _is_itunes, "explicit"), None)
        item.explicit = explicit.text if explicit is not None else None
        for transcript in _children(element, _is_podcast, "transcript"):
            url = (transcript.get("url") or "").strip()
            if url:
                item.transcripts.append((url, (transcript.get("type") or "").lower()))
        guid = element.find("guid")
        enclosure = element.find("enclosure")
        key = (guid.text or "").strip() if guid is not None else ""
        if not key and enclosure is not None:
            key = (enclosure.get("url") or "").strip()
        if key:
            tree.items.setdefault(key, item)
    return tree


def _best_transcript(transcripts: list[tuple[str, str]]) -> str:
    def rank(entry: tuple[str, str]) -> int:
        kind = entry[1].split(";")[0].strip()
        if kind in _TRANSCRIPT_PREFERENCE:
            return _TRANSCRIPT_PREFERENCE.index(kind)
        return len(_TRANSCRIPT_PREFERENCE)

    usable = [t for t in transcripts if is_http_url(t[0])]
    return min(usable, key=rank)[0] if usable else ""


# feedparser's view


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _title(entry: Mapping[str, Any]) -> str:
    title = _text(entry.get("title"))
    detail = entry.get("title_detail") or {}
    return plain_text(title) if "html" in (detail.get("type") or "") else title


def _url(value: Any, what: str, item: str, warnings: _Warnings) -> str:
    url = _text(value)
    if url and not is_http_url(url):
        warnings.add(item, f"{what} {url[:200]!r} is not an http(s) URL, ignored")
        return ""
    return url


def _cut(value: str, limit: int, what: str, item: str, warnings: _Warnings) -> str:
    if len(value) <= limit:
        return value
    warnings.add(item, f"{what} longer than {limit} characters, cut")
    return value[:limit]


def _channel(feed: Mapping[str, Any], tree: _Tree | None, warnings: _Warnings) -> FeedChannel:
    title = _cut(_title(feed), MAX_TITLE_LENGTH, "title", "", warnings)
    if not title:
        raise InvalidArgument.field("feed", "the feed has no channel title", reason="FEED_INVALID")
    author = tree.author if tree is not None and tree.author is not None else ""
    # managingEditor reads "renee@example.net (Renée)"; the name is the author.
    author = author or _text((feed.get("author_detail") or {}).get("name"))
    author = author or _text(feed.get("author"))
    if tree is not None and tree.categories is not None:
        categories = tree.categories
    else:
        categories = [
            _text(t.get("term"))
            for t in feed.get("tags") or []
            if "itunes.com" in (t.get("scheme") or "")
        ]
    for name in [c for c in categories if c and not is_category(c)]:
        warnings.add("", f"category {name[:100]!r} is not an Apple Podcasts category name, ignored")
    categories = [c for c in categories if c and is_category(c)]
    language = canonical_language(_text(feed.get("language")))
    if language and not is_language(language):
        warnings.add("", f"language {language!r} is not a BCP 47 tag, ignored")
        language = ""
    publisher = feed.get("publisher_detail") or {}
    owner_email = _text(publisher.get("email"))
    if owner_email and not is_email(owner_email):
        warnings.add("", f"owner e-mail {owner_email!r} is not an e-mail address, ignored")
        owner_email = ""
    explicit = parse_explicit(tree.explicit) if tree is not None else None
    if explicit is None:
        explicit = feed.get("itunes_explicit")
    image = feed.get("image") or {}
    self_urls = [
        _text(link.get("href"))
        for link in feed.get("links") or []
        if link.get("rel") == "self" and is_http_url(_text(link.get("href")))
    ]
    if tree is not None and is_http_url(tree.new_feed_url):
        self_urls.append(tree.new_feed_url)
    return FeedChannel(
        title=title,
        author=_cut(author, MAX_NAME_LENGTH, "author", "", warnings),
        description=_cut(
            _text(feed.get("summary")) or _text(feed.get("subtitle")),
            MAX_DESCRIPTION_LENGTH,
            "description",
            "",
            warnings,
        ),
        categories=tuple(dict.fromkeys(canonical_category(c) for c in categories))[:MAX_CATEGORIES],
        language=language,
        website_url=_url(feed.get("link"), "website link", "", warnings),
        artwork_url=_url(image.get("href") or image.get("url"), "artwork URL", "", warnings),
        owner_name=_cut(_text(publisher.get("name")), MAX_NAME_LENGTH, "owner name", "", warnings),
        owner_email=owner_email,
        explicit=explicit if isinstance(explicit, bool) else None,
        podcast_type=_PODCAST_TYPES.get(_text(feed.get("itunes_type")).lower()),
        podcast_guid=_text(feed.get("podcast_guid"))[:MAX_NAME_LENGTH],
        self_urls=tuple(dict.fromkeys(self_urls)),
    )


def _enclosure(entry: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The first audio or video enclosure, else the first of any type."""
    enclosures: list[Mapping[str, Any]] = [
        e for e in entry.get("enclosures") or [] if _text(e.get("href"))
    ]
    media = [e for e in enclosures if _text(e.get("type")).startswith(("audio/", "video/"))]
    return next(iter(media or enclosures), None)


def _number(value: Any, what: str, item: str, warnings: _Warnings) -> int | None:
    text = _text(value)
    if not text:
        return None
    if text.isdigit() and int(text) < 2**31:
        return int(text)
    warnings.add(item, f"{what} {text[:50]!r} is not a whole number, ignored")
    return None


def _size(value: Any, item: str, warnings: _Warnings) -> int | None:
    text = _text(value)
    if not text or text == "0":
        return None
    if text.isdigit():
        return int(text)
    warnings.add(item, f"enclosure length {text[:50]!r} is not a byte count, ignored")
    return None


def _published(entry: Mapping[str, Any], item: str, warnings: _Warnings) -> datetime | None:
    # A plain dict: FeedParserDict maps a missing "updated" to "published", with
    # a deprecation warning, and we ask for both anyway.
    fields = dict(entry)
    parsed = fields.get("published_parsed") or fields.get("updated_parsed")
    if parsed:
        return datetime.fromtimestamp(calendar.timegm(parsed), UTC)
    raw = _text(fields.get("published") or fields.get("updated"))
    if raw:
        warnings.add(item, f"unparseable publish date {raw[:100]!r}, left unset")
    return None


def _fallback_title(media_url: str) -> str:
    name = PurePosixPath(unquote(urlsplit(media_url).path)).stem
    return name.replace("_", " ").replace("-", " ").strip() or "Untitled episode"


class _Skipped(Exception):
    """An item that cannot be imported; the message says why."""


def _label(entry: Mapping[str, Any]) -> str:
    return (_text(entry.get("id")) or _title(entry) or "untitled item")[:200]


def _item(entry: Mapping[str, Any], tree: _Tree | None, warnings: _Warnings) -> FeedItem:
    guid = _text(entry.get("id"))
    label = _label(entry)
    enclosure = _enclosure(entry)
    if enclosure is None:
        raise _Skipped("no enclosure, skipped")
    media_url = _text(enclosure.get("href"))
    if not is_http_url(media_url):
        raise _Skipped(f"enclosure URL {media_url[:200]!r} is not an http(s) URL, skipped")
    if len(guid) > MAX_GUID_LENGTH:
        raise _Skipped(f"GUID longer than {MAX_GUID_LENGTH} characters, skipped")
    title = _cut(_title(entry), MAX_TITLE_LENGTH, "title", label, warnings)
    if not title:
        title = _fallback_title(media_url)
        warnings.add(label, f"no title, named {title!r} after its file")
    content = entry.get("content") or [{}]
    description = _text(entry.get("summary")) or _text(content[0].get("value"))
    duration = None
    try:
        duration = parse_duration(_text(entry.get("itunes_duration")))
    except ValueError as error:
        warnings.add(label, f"{error}, left unset")
    tree_item = tree.items.get(guid or media_url) if tree is not None else None
    explicit = parse_explicit(tree_item.explicit) if tree_item is not None else None
    if explicit is None and isinstance(entry.get("itunes_explicit"), bool):
        explicit = entry["itunes_explicit"]
    transcript = _best_transcript(tree_item.transcripts) if tree_item is not None else ""
    if not transcript:
        transcript = _url(
            (entry.get("podcast_transcript") or {}).get("url"), "transcript URL", label, warnings
        )
    image = entry.get("image") or {}
    season = entry.get("itunes_season") or entry.get("podcast_season")
    number = entry.get("itunes_episode") or entry.get("podcast_episode")
    return FeedItem(
        guid=guid or media_url,
        has_guid=bool(guid),
        title=title,
        media_url=media_url,
        description=_cut(description, MAX_DESCRIPTION_LENGTH, "description", label, warnings),
        publish_at=_published(entry, label, warnings),
        media_type=_text(enclosure.get("type"))[:MAX_NAME_LENGTH],
        media_size_bytes=_size(enclosure.get("length"), label, warnings),
        duration_ms=duration,
        season_number=_number(season, "season", label, warnings),
        episode_number=_number(number, "episode number", label, warnings),
        episode_type=_EPISODE_TYPES.get(_text(entry.get("itunes_episodetype")).lower()),
        explicit=explicit,
        artwork_url=_url(image.get("href"), "artwork URL", label, warnings),
        transcript_url=transcript,
    )


def parse_feed(body: bytes) -> ParsedFeed:
    """The channel and its importable items, or InvalidArgument (NOT_A_FEED,
    FEED_INVALID). Items that cannot be imported are skipped with a warning.
    Characters PostgreSQL cannot store are removed from the feed's text, with
    a warning for the channel or item they were in."""
    body = _surrogate_refs_as_nul(body)
    try:
        # A file object, never bytes or str: feedparser.parse() opens a string that
        # names a file or URL, which would let a feed body read the server's files.
        parsed = feedparser.parse(io.BytesIO(body))
    except UnicodeError:
        # Surrogates the byte scan cannot see: UTF-16 or UTF-32 documents.
        raise InvalidArgument.field(
            "feed", "the feed names characters that do not exist", reason="FEED_INVALID"
        ) from None
    if not parsed.get("version"):
        raise InvalidArgument.field(
            "feed",
            "the document is not an RSS or Atom feed",
            reason="NOT_A_FEED",
        )
    warnings = _Warnings()
    tree = _read_tree(body)
    if tree is None and parsed.get("bozo"):
        warnings.add("", f"not well-formed XML ({parsed.get('bozo_exception')}); read leniently")
    feed = parsed.get("feed") or {}
    if _make_storable(feed):
        warnings.add("", _STRIPPED)
    channel = _channel(feed, tree, warnings)
    items: list[FeedItem] = []
    seen_guids: set[str] = set()
    skipped = 0
    for entry in parsed.get("entries") or []:
        # Before anything reads the entry: its GUID must be the one stored.
        if _make_storable(entry):
            warnings.add(_label(entry), _STRIPPED)
        try:
            item = _item(entry, tree, warnings)
            if item.guid in seen_guids:
                raise _Skipped("duplicate GUID, item skipped")
        except _Skipped as skip:
            warnings.add(_label(entry), str(skip))
            skipped += 1
            continue
        seen_guids.add(item.guid)
        items.append(item)
    return ParsedFeed(channel=channel, items=items, skipped=skipped, warnings=warnings.items)


_STRIPPED = "removed NUL or unpaired surrogate characters, which cannot be stored"


def storable(text: str) -> str:
    """`text` without the characters PostgreSQL text cannot hold."""
    return _UNSTORABLE.sub("", text)


def _surrogate_refs_as_nul(body: bytes) -> bytes:
    """Turns references to surrogates into "&#0;", which feedparser reads (as
    NUL, removed with the rest) where it raises on a surrogate."""

    def replace(match: re.Match[bytes]) -> bytes:
        hex_digits, decimal = match.groups()
        code = int(hex_digits, 16) if hex_digits else int(decimal)
        return b"&#0;" if 0xD800 <= code <= 0xDFFF else match.group(0)

    return _CHAR_REF.sub(replace, body) if b"&#" in body else body


def _make_storable(value: Any) -> bool:
    """Removes unstorable characters from every string in feedparser's nested
    dicts and lists, in place; says whether there were any."""
    changed = False
    if isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(inner, str):
                if _UNSTORABLE.search(inner):
                    # dict's own __setitem__: FeedParserDict's renames keys.
                    dict.__setitem__(value, key, storable(inner))
                    changed = True
            elif isinstance(inner, dict | list):
                changed = _make_storable(inner) or changed
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            if isinstance(inner, str):
                if _UNSTORABLE.search(inner):
                    value[index] = storable(inner)
                    changed = True
            elif isinstance(inner, dict | list):
                changed = _make_storable(inner) or changed
    return changed


# Transcripts


def transcript_text(body: bytes, content_type: str, url: str) -> str:
    """Plain text of a transcript file (text, WebVTT, SRT, Podcasting 2.0 JSON
    or HTML); ValueError when it is none of them."""
    kind = content_type.split(";")[0].strip().lower()
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    text = storable(body.decode("utf-8", errors="replace").lstrip("\ufeff"))
    if kind == "application/json" or suffix == ".json":
        try:
            document = json.loads(text)
            segments = document["segments"]
            text = " ".join(str(s.get("body", "")) for s in segments if isinstance(s, dict))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError("not a Podcasting 2.0 JSON transcript") from None
        # JSON escapes (\u0000, \ud800) make what the bytes did not hold.
        text = storable(text)
    elif kind in ("text/vtt", "application/x-subrip", "application/srt") or suffix in (
        ".vtt",
        ".srt",
    ):
        text = _cue_text(text)
    elif "html" in kind or suffix in (".html", ".htm"):
        text = plain_text(text)
    return " ".join(text.split())[:MAX_TRANSCRIPT_LENGTH]


def _cue_text(text: str) -> str:
    lines = []
    in_note = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            in_note = False
            continue
        if line.startswith(("WEBVTT", "NOTE", "STYLE", "REGION")):
            in_note = not line.startswith("WEBVTT")
            continue
        if in_note or "-->" in line or line.isdigit():
            continue
        lines.append(plain_text(line))
    return " ".join(lines)
