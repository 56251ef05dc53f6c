"""Feed and transcript text PostgreSQL cannot store: NUL and unpaired surrogates."""

from __future__ import annotations

import pytest

from services.catalog.feeds import parse_feed, transcript_text
from services.shared.errors import InvalidArgument
from tests.catalog.support import fixture

STRIPPED = "removed NUL or unpaired surrogate characters, which cannot be stored"


def unstorable(text: str) -> bool:
    return "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def test_feed_text_loses_nul_and_surrogates_with_a_warning_where_they_were() -> None:
    parsed = parse_feed(fixture("nul.xml"))
    assert parsed.channel.title == "Null Island Radio"
    assert parsed.channel.author == "Null Island Collective"
    by_guid = {item.guid: item for item in parsed.items}
    assert set(by_guid) == {"null-1", "null-2", "null-3", "null-4"}
    assert by_guid["null-2"].title == "A raw byte"
    assert by_guid["null-3"].title == "Smile  and  please"
    for item in parsed.items:
        assert not any(unstorable(text) for text in (item.guid, item.title, item.description))
    assert [w.item for w in parsed.warnings if w.message == STRIPPED] == [
        "",
        "null-1",
        "null-2",
        "null-3",
    ]


def test_a_guid_that_only_differed_by_nul_is_a_duplicate() -> None:
    body = fixture("nul.xml").replace(b"null-3</guid>", b"null-\x00\x001</guid>")
    parsed = parse_feed(body)
    assert [item.guid for item in parsed.items] == ["null-1", "null-2", "null-4"]
    assert ("null-1", "duplicate GUID, item skipped") in {
        (w.item, w.message) for w in parsed.warnings
    }


def test_surrogates_in_utf16_are_refused_not_raised() -> None:
    text = fixture("nul.xml").decode().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    with pytest.raises(InvalidArgument) as raised:
        parse_feed(text.encode("utf-16"))
    assert raised.value.reason == "FEED_INVALID"


@pytest.mark.parametrize(
    ("body", "content_type", "url"),
    [
        (b"plain\x00 text", "text/plain", "t.txt"),
        (b"WEBVTT\n\n00:00.000 --> 00:01.000\nplain\x00 text\n", "text/vtt", "t.vtt"),
        (b'{"segments": [{"body": "plain\\u0000 te\\ud800xt"}]}', "application/json", "t.json"),
    ],
)
def test_transcripts_lose_nul_and_surrogates(body: bytes, content_type: str, url: str) -> None:
    assert transcript_text(body, content_type, url) == "plain text"
