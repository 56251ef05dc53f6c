"""Ads delivered: dynamic and baked-in slots, only inside counted downloads."""

from __future__ import annotations

from services.analytics.counting import (
    AdInsertion,
    AdSlot,
    EpisodeMedia,
    IntervalSet,
    count_downloads,
    delivered_slots,
)

from .support import EPISODE, MEDIA, SIZE, THRESHOLD, ranged, request

QUARTER_LAST = (SIZE - 1) // 4


def slots(*intervals: tuple[int, int]) -> tuple[str, ...]:
    return delivered_slots(IntervalSet.of(intervals), EPISODE)


def test_dynamic_ad_needs_all_of_its_bytes() -> None:
    assert "pre" in slots((0, 580_000 - 1))
    assert "pre" not in slots((0, 580_000 - 2))
    assert "mid" in slots((15_000_000, 15_479_999))
    assert "mid" not in slots((15_000_001, 15_479_999))


def test_baked_in_ad_in_the_first_quarter_needs_the_first_quarter_of_the_file() -> None:
    assert "host-read" not in slots((0, 5_959_999))
    assert "host-read" in slots((0, QUARTER_LAST))
    assert "host-read" not in slots((1, QUARTER_LAST))


def test_baked_in_ad_after_the_first_quarter_needs_all_of_its_bytes() -> None:
    late = EpisodeMedia(
        "e", SIZE, 0, 128_000, 1800.0, (AdSlot("late", AdInsertion.BAKED_IN, SIZE - 100, SIZE - 1),)
    )
    assert delivered_slots(IntervalSet.of([(SIZE - 100, SIZE - 1)]), late) == ("late",)
    assert delivered_slots(IntervalSet.of([(0, SIZE - 2)]), late) == ()


def test_baked_in_ad_in_a_file_of_unknown_size_needs_all_of_its_bytes() -> None:
    unknown = EpisodeMedia("e", ad_slots=(AdSlot("a", AdInsertion.BAKED_IN, 10, 19),))
    assert delivered_slots(IntervalSet.of([(10, 19)]), unknown) == ("a",)
    assert delivered_slots(IntervalSet.of([(0, 18)]), unknown) == ()


def test_ad_slot_without_a_byte_range_is_never_delivered() -> None:
    vague = EpisodeMedia("e", SIZE, ad_slots=(AdSlot("a", AdInsertion.DYNAMIC),))
    assert delivered_slots(IntervalSet.of([(0, SIZE - 1)]), vague) == ()


def test_ads_count_only_inside_counted_downloads() -> None:
    below_threshold = count_downloads([ranged(0, 600_000)], MEDIA)
    assert below_threshold.downloads == ()
    assert below_threshold.ads == ()


def test_ads_delivered_share_the_download() -> None:
    result = count_downloads(
        [ranged(0, THRESHOLD, "2024-03-04T10:00:00"), ranged(0, SIZE - 1, "2024-03-04T11:00:00")],
        MEDIA,
    )
    [download] = result.downloads
    assert [(a.slot_id, a.download) for a in result.ads] == [
        ("host-read", download),
        ("mid", download),
        ("pre", download),
    ]


def test_full_get_delivers_every_ad() -> None:
    result = count_downloads([request()], MEDIA)
    assert sorted(a.slot_id for a in result.ads) == ["host-read", "mid", "pre"]


def test_first_quarter_ends_before_byte_size_over_4() -> None:
    # In a 400-byte file the first quarter is bytes 0..99; a slot at 100 is after it.
    at_quarter = EpisodeMedia("e", 400, ad_slots=(AdSlot("a", AdInsertion.BAKED_IN, 100, 149),))
    assert delivered_slots(IntervalSet.of([(0, 99)]), at_quarter) == ()
    assert delivered_slots(IntervalSet.of([(100, 149)]), at_quarter) == ("a",)
    inside = EpisodeMedia("e", 400, ad_slots=(AdSlot("a", AdInsertion.BAKED_IN, 99, 149),))
    assert delivered_slots(IntervalSet.of([(0, 99)]), inside) == ("a",)
