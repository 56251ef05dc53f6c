"""Media facts: derived bitrates and ad byte ranges, and the episode rules."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from services.catalog.domain import (
    AdInsertion,
    AdPosition,
    AdSlot,
    Episode,
    apply_episode_update,
    derive_bitrate,
    derive_byte_range,
    validate_episode,
    with_media_facts,
)
from services.shared.errors import InvalidArgument

PODCAST = uuid.uuid4()


def slot(start_ms: int, duration_ms: int, **given: int) -> AdSlot:
    return AdSlot(
        id=None,
        position=AdPosition.MID_ROLL,
        insertion=AdInsertion.DYNAMIC,
        start_offset_ms=start_ms,
        duration_ms=duration_ms,
        given_start_byte=given.get("start"),
        given_end_byte=given.get("end"),
    )


def episode(**fields: object) -> Episode:
    base = Episode(
        id=uuid.uuid4(),
        podcast_id=PODCAST,
        guid="g",
        title="An episode",
        media_url="https://cdn.example.com/e.mp3",
    )
    return replace(base, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "id3", "duration_ms", "bitrate"),
    [
        (57_600_000, 0, 3_600_000, 128_000),
        (57_610_000, 10_000, 3_600_000, 128_000),
        (57_610_000, None, 3_600_000, 128_022),  # unknown tag counted as audio
        (4_800_000, 0, 600_000, 64_000),
        (0, 0, 3_600_000, 0),  # size unknown
        (57_600_000, 0, None, 0),  # duration unknown
        (57_600_000, 0, 0, 0),
        (10_000, 10_000, 60_000, 0),  # nothing but the tag
    ],
)
def test_derive_bitrate(size: int, id3: int | None, duration_ms: int | None, bitrate: int) -> None:
    assert derive_bitrate(size, id3, duration_ms) == bitrate


def test_byte_range_from_time_bitrate_and_id3() -> None:
    # 128 kbps is 16,000 bytes a second; the tag shifts everything.
    mid = slot(1_800_000, 60_000)
    assert derive_byte_range(mid, 128_000, 10_000, 0) == (28_810_000, 29_770_000 - 1)
    assert derive_byte_range(mid, 128_000, None, 0) == (None, None)  # no guessing the tag
    assert derive_byte_range(mid, 0, 10_000, 0) == (None, None)
    given = slot(0, 30_000, start=500, end=900)
    assert derive_byte_range(given, 128_000, 10_000, 0) == (500, 900)
    start_only = slot(0, 30_000, start=500)
    assert derive_byte_range(start_only, 128_000, None, 0) == (500, 500 + 480_000 - 1)
    # Past the end of a file of known size: cut at the last byte, or unknown.
    assert derive_byte_range(slot(0, 60_000), 128_000, 0, 100_000) == (0, 99_999)
    assert derive_byte_range(slot(10_000, 1_000), 128_000, 0, 100_000) == (None, None)


def test_media_facts_fill_in_bitrate_and_ranges() -> None:
    facts = with_media_facts(
        episode(
            media_url="https://dts.podtrac.com/redirect.mp3/cdn.example.com/e.mp3?x=1",
            media_size_bytes=10_000 + 9_600_000,
            id3_size_bytes=10_000,
            duration_ms=600_000,
            ad_slots=(slot(300_000, 30_000), slot(0, 15_000)),
        )
    )
    assert (facts.bitrate_bps, facts.bitrate_derived) == (128_000, True)
    assert facts.normalized_media_url == "cdn.example.com/e.mp3"
    first, second = facts.ad_slots
    assert (first.start_offset_ms, second.start_offset_ms) == (0, 300_000)  # in time order
    assert (first.start_byte, first.end_byte) == (10_000, 10_000 + 240_000 - 1)
    assert first.byte_range_derived
    assert all(s.id is not None for s in facts.ad_slots)
    given = with_media_facts(replace(facts, bitrate_bps=64_000, bitrate_derived=False))
    assert (given.bitrate_bps, given.bitrate_derived) == (64_000, False)


@st.composite
def media(draw: st.DrawFn) -> tuple[Episode, int]:
    """An episode with non-overlapping slots within its duration, and a bitrate."""
    duration_ms = draw(st.integers(min_value=60_000, max_value=4 * 3_600_000))
    id3 = draw(st.integers(min_value=0, max_value=2_000_000))
    bitrate = draw(st.integers(min_value=8_000, max_value=512_000))
    # The stated size may disagree with the bitrate, as real files do.
    audio = duration_ms * bitrate // 8000
    size = draw(st.sampled_from([0, id3 + audio, id3 + audio // 2, id3 + audio * 2]))
    assume(size == 0 or size > id3)
    cuts = sorted(
        draw(
            st.lists(
                st.integers(min_value=0, max_value=duration_ms),
                min_size=2,
                max_size=12,
                unique=True,
            )
        )
    )
    slots = [
        slot(start, end - start)
        for start, end in zip(cuts[::2], cuts[1::2], strict=False)
        if end - start >= 1000
    ]
    given_bitrate = draw(st.booleans())
    ep = episode(
        duration_ms=duration_ms,
        id3_size_bytes=id3,
        media_size_bytes=size,
        bitrate_bps=bitrate if given_bitrate or size == 0 else 0,
        ad_slots=tuple(draw(st.permutations(slots))),
    )
    return ep, id3


@given(media())
def test_derived_ranges_stay_in_the_file_and_in_order(case: tuple[Episode, int]) -> None:
    ep, id3 = case
    facts = with_media_facts(validate_episode(ep))
    previous_end = -1
    for s in facts.ad_slots:
        if s.start_byte is None:
            assert s.end_byte is None
            continue
        assert s.end_byte is not None
        assert id3 <= s.start_byte <= s.end_byte
        if facts.media_size_bytes:
            assert s.end_byte < facts.media_size_bytes
        assert s.start_byte > previous_end  # adjacent slots never share a byte
        previous_end = s.end_byte


@given(
    st.integers(min_value=0, max_value=10**10),
    st.integers(min_value=0, max_value=10**7),
    st.integers(min_value=1, max_value=10**8),
)
def test_derived_bitrate_is_never_negative_and_fits(size: int, id3: int, duration: int) -> None:
    bitrate = derive_bitrate(size, id3, duration)
    assert 0 <= bitrate < 2**31
    if bitrate:
        assert size > id3


def test_every_violation_is_reported_at_once() -> None:
    bad = episode(
        title=" ",
        media_url="ftp://nope/x.mp3",
        media_size_bytes=-1,
        duration_ms=-1,
        bitrate_bps=-1,
        id3_size_bytes=-5,
        season_number=-1,
        episode_number=-2,
        ad_slots=(AdSlot(None, AdPosition.UNSPECIFIED, AdInsertion.UNSPECIFIED, -1, 10),),
    )
    with pytest.raises(InvalidArgument) as error:
        validate_episode(bad)
    assert [v.field for v in error.value.violations] == [
        "episode.title",
        "episode.media_url",
        "episode.media_size_bytes",
        "episode.duration",
        "episode.bitrate_bps",
        "episode.id3_size_bytes",
        "episode.season_number",
        "episode.episode_number",
        "episode.ad_slots[0].position",
        "episode.ad_slots[0].insertion",
        "episode.ad_slots[0].start_offset",
        "episode.ad_slots[0].duration",
    ]


def test_slots_must_fit_the_episode_and_each_other() -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_episode(
            episode(
                duration_ms=100_000,
                media_size_bytes=1_000,
                ad_slots=(
                    slot(90_000, 20_000),
                    slot(0, 30_000, start=10, end=5),
                    slot(20_000, 10_000, end=2_000),
                ),
            )
        )
    assert {(v.field, v.description) for v in error.value.violations} == {
        ("episode.ad_slots[0].duration", "must end within the episode's duration"),
        ("episode.ad_slots[1].end_byte", "must not be before start_byte (the range is inclusive)"),
        ("episode.ad_slots[2].start_offset", "must not overlap the slot before it"),
        ("episode.ad_slots[2].end_byte", "must lie within the media file"),
    }


def test_update_keeps_derived_ranges_derived() -> None:
    stored = validate_episode(
        episode(
            media_size_bytes=9_600_000,
            duration_ms=600_000,
            id3_size_bytes=0,
            ad_slots=(slot(300_000, 30_000),),
        )
    )
    read_back = stored.ad_slots[0]
    assert read_back.byte_range_derived
    # A client sends the slot back as read, with the derived bytes filled in.
    echoed = replace(
        read_back, given_start_byte=read_back.start_byte, given_end_byte=read_back.end_byte
    )
    patch = replace(stored, media_size_bytes=4_800_000, ad_slots=(echoed,))
    updated = apply_episode_update(stored, patch, {"media_size_bytes", "ad_slots"})
    moved = updated.ad_slots[0]
    assert moved.id == read_back.id
    assert moved.byte_range_derived
    assert (moved.start_byte, moved.end_byte) == (300 * 8_000, 330 * 8_000 - 1)

    cleared = apply_episode_update(
        replace(stored, bitrate_bps=96_000, bitrate_derived=False),
        replace(stored, bitrate_bps=0),
        {"bitrate_bps"},
    )
    assert (cleared.bitrate_bps, cleared.bitrate_derived) == (128_000, True)


def test_update_refuses_unknown_slot_ids() -> None:
    stored = validate_episode(episode(ad_slots=(slot(0, 10_000),)))
    stranger = replace(stored.ad_slots[0], id=uuid.uuid4())
    with pytest.raises(InvalidArgument) as error:
        apply_episode_update(stored, replace(stored, ad_slots=(stranger,)), {"ad_slots"})
    assert [v.field for v in error.value.violations] == ["episode.ad_slots[0].id"]
