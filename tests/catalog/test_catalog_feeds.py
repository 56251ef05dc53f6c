"""Reading feeds: durations, the fixture feeds, transcripts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.catalog.domain import EpisodeType, PodcastType
from services.catalog.feeds import (
    MAX_WARNINGS,
    FeedWarning,
    cap_warnings,
    parse_duration,
    parse_explicit,
    parse_feed,
    transcript_text,
)
from services.shared.errors import InvalidArgument
from tests.catalog.support import fixture, generated_feed


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("01:02:03", 3_723_000),
        ("1:02:03", 3_723_000),
        ("00:54:36", 3_276_000),
        ("49:10", 2_950_000),
        ("62:30", 3_750_000),  # minutes past an hour in MM:SS
        ("2622", 2_622_000),
        ("90.5", 90_500),
        ("00:45:00.250", 2_700_250),
        ("0", 0),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_duration(text: str, ms: int | None) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["1h2", "45 min", "1:60", "1:60:00", "1:00:75", "-30", "PT45M"])
def test_unparseable_durations(text: str) -> None:
    with pytest.raises(ValueError, match="unparseable duration"):
        parse_duration(text)


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59))
def test_clock_durations_round_trip(hours: int, minutes: int, secs: int) -> None:
    expected = ((hours * 60 + minutes) * 60 + secs) * 1000
    assert parse_duration(f"{hours:02d}:{minutes:02d}:{secs:02d}") == expected
    assert parse_duration(str(expected // 1000)) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [("yes", True), ("true", True), ("Explicit", True), ("no", False), ("false", False),
     ("clean", False), ("", None), ("maybe", None), (None, None)],
)  # fmt: skip
def test_parse_explicit(text: str | None, value: bool | None) -> None:
    assert parse_explicit(text) is value


def test_apple_feed() -> None:
    feed = parse_feed(fixture("apple.xml"))
    channel = feed.channel
    # feedparser would report the owner's name here; the tree says otherwise.
    assert channel.author == "Maya Okafor"
    assert channel.owner_name == "Ledger Lane Media"
    assert channel.categories == ("Business/Investing", "Education/Self-Improvement")
    assert channel.explicit is False
    assert channel.podcast_type is PodcastType.EPISODIC
    assert channel.self_urls == ("https://feeds.personalfinancehour.example.com/rss",)
    assert [i.guid for i in feed.items] == [
        "pfh-045", "pfh-044", "pfh-043", "pfh-bonus-7", "pfh-s3-trailer",
    ]  # fmt: skip
    first = feed.items[0]
    assert first.publish_at == datetime(2024, 3, 12, 8, tzinfo=UTC)
    assert (first.duration_ms, first.media_size_bytes) == (3_276_000, 52_428_800)
    assert (first.season_number, first.episode_number) == (3, 45)
    assert feed.items[1].explicit is True
    assert feed.items[3].episode_type is EpisodeType.BONUS
    assert feed.warnings == []


def test_podcasting20_feed() -> None:
    feed = parse_feed(fixture("podcasting20.xml", "https://show.example"))
    assert feed.channel.podcast_guid == "1c3d6a7e-5a43-5f3c-9a4e-2f8d0e9b7c11"
    assert feed.channel.podcast_type is PodcastType.SERIAL
    yagi, sdr, trailer = feed.items
    assert yagi.transcript_url == "https://show.example/transcripts/s1e2.json"
    assert sdr.transcript_url == "https://show.example/transcripts/s1e1.vtt"
    assert (sdr.season_number, sdr.episode_number) == (1, 1)
    assert trailer.transcript_url == ""
    assert trailer.episode_type is EpisodeType.TRAILER


def test_messy_feed() -> None:
    feed = parse_feed(fixture("messy.xml"))
    assert feed.channel.language == "en-GB"
    assert feed.channel.author == "Renée"
    assert "<script>" not in feed.channel.description
    assert feed.skipped == 3
    by_guid = {i.guid: i for i in feed.items}
    assert by_guid["ktc-12"].media_size_bytes is None  # length "unknown"
    assert by_guid["ktc-12"].media_url.endswith("/ktc12.mp3")  # the first of the repeated GUID
    assert by_guid["ktc-11"].duration_ms is None
    assert by_guid["ktc-11"].publish_at is None
    assert by_guid["ktc-09"].publish_at == datetime(2024, 2, 15, 15, tzinfo=UTC)
    no_guid = by_guid["http://media.kitchentable.example.net/ktc10.mp3?source=rss"]
    assert not no_guid.has_guid
    assert no_guid.duration_ms == 2_700_000
    assert by_guid["ktc-08"].title == "ktc08 bread baking tips"
    assert {w.item for w in feed.warnings} >= {"ktc-12", "ktc-11", "ktc-announcement", "ktc-01"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<!doctype html><html><body><p>Welcome</p></body></html>", "NOT_A_FEED"),
        (b'{"version": "https://jsonfeed.org/version/1"}', "NOT_A_FEED"),
        (b"", "NOT_A_FEED"),
        (
            b'<rss version="2.0"><channel><item><title>x</title></item></channel></rss>',
            "FEED_INVALID",
        ),
    ],
)
def test_what_is_not_an_importable_feed(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        parse_feed(body)
    assert error.value.reason == reason


def test_a_feed_body_naming_a_file_is_data_not_a_path() -> None:
    with pytest.raises(InvalidArgument):
        parse_feed(b"/etc/hostname")


def test_large_generated_feed() -> None:
    feed = parse_feed(generated_feed(300))
    assert len(feed.items) == 300
    assert feed.warnings == []


def test_transcript_formats() -> None:
    vtt = transcript_text(fixture("s1e1.vtt"), "text/vtt", "https://x/s1e1.vtt")
    assert vtt.startswith("Welcome to Open Waves. Today: software defined radio.")
    assert "-->" not in vtt
    assert "NOTE" not in vtt
    assert "<v" not in vtt
    document = transcript_text(fixture("s1e2.json"), "application/json", "https://x/t")
    assert document.startswith("This week we build a yagi antenna. Three elements")
    srt = (
        b"1\n00:00:01,000 --> 00:00:02,000\nHello there\n\n"
        b"2\n00:00:02,000 --> 00:00:03,000\nGeneral\n"
    )
    assert transcript_text(srt, "application/x-subrip", "https://x/a.srt") == "Hello there General"
    html = b"<html><body><h1>Transcript</h1><p>Words &amp; more</p></body></html>"
    assert (
        transcript_text(html, "text/html; charset=utf-8", "https://x/t")
        == "Transcript Words & more"
    )
    assert (
        transcript_text(b"\xef\xbb\xbfplain  text\n", "text/plain", "https://x/t.txt")
        == "plain text"
    )
    with pytest.raises(ValueError, match="JSON transcript"):
        transcript_text(json.dumps({"chapters": []}).encode(), "application/json", "https://x/t")


def test_warnings_are_capped_with_a_count() -> None:
    many = [FeedWarning(str(n), "duplicate GUID, item skipped") for n in range(250)]
    capped = cap_warnings(many)
    assert len(capped) == MAX_WARNINGS
    assert capped[-1] == FeedWarning("", "151 more warnings not shown")
    assert cap_warnings(many[:5]) == many[:5]
