"""Ingestion without a database: record checks and anonymisation, the counting-state
encoding. The whole path through Envoy is in tests/integration/test_analytics_ingest*."""

from __future__ import annotations

import uuid

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from podmesh.analytics.v1 import analytics_pb2 as pb

from services.analytics.counting import (
    AdInsertion,
    AdSlot,
    CountingSettings,
    CountingWindow,
    DownloadAccumulator,
    EpisodeMedia,
    IpExclusions,
    IpHasher,
    ListenerRequest,
    compile_rules,
)
from services.analytics.ingest.records import (
    CheckedBatch,
    Episode,
    check_batch,
    episode_references,
    is_byte_range,
)
from services.analytics.ingest.state import decode, encode

TENANT = uuid.UUID("4b0c6a5e-3f4e-4a61-9c0e-1f0d2a3b4c5d")
HASHER = IpHasher(b"test-platform-secret-0123456789", TENANT)
EPISODE = Episode(str(uuid.uuid4()), str(uuid.uuid4()))
URL = "https://cdn.example.com/show/episode-1.mp3"
NOW_US = 1_800_000_000_000_000
DAY_US = 86_400_000_000
AGENT = "Overcast/3.0 (+http://overcast.fm/; iOS podcast app)"


def record(**fields: object) -> pb.ListenerRequest:
    values: dict[str, object] = {
        "id": f"r-{uuid.uuid4().hex[:8]}",
        "request_time": Timestamp(seconds=(NOW_US - 3_600_000_000) // 1_000_000),
        "episode_id": EPISODE.episode_id,
        "client_ip": "192.0.2.10",
        "user_agent": AGENT,
        "http_method": "GET",
        "status_code": 206,
        "range": "bytes=0-",
        "bytes_served": 2_000_000,
        "country_code": "us",
    }
    values.update(fields)
    return pb.ListenerRequest(**values)  # type: ignore[arg-type]


async def check(
    records: list[pb.ListenerRequest], exclusions: IpExclusions | None = None
) -> CheckedBatch:
    return await check_batch(
        records,
        tenant_id=TENANT,
        by_id={EPISODE.episode_id: EPISODE},
        by_url={URL: EPISODE},
        hasher=HASHER,
        exclusions=exclusions or IpExclusions(),
        now_us=NOW_US,
        oldest_us=NOW_US - 180 * DAY_US,
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"id": ""}, pb.REJECTION_REASON_INVALID_ID),
        ({"id": "x" * 129}, pb.REJECTION_REASON_INVALID_ID),
        ({"request_time": None}, pb.REJECTION_REASON_MISSING_TIME),
        (
            {"request_time": Timestamp(seconds=NOW_US // 1_000_000 + 301)},
            pb.REJECTION_REASON_TIME_IN_FUTURE,
        ),
        (
            {"request_time": Timestamp(seconds=(NOW_US - 181 * DAY_US) // 1_000_000)},
            pb.REJECTION_REASON_TIME_TOO_OLD,
        ),
        ({"episode_id": ""}, pb.REJECTION_REASON_MISSING_EPISODE),
        ({"episode_id": "not-a-uuid"}, pb.REJECTION_REASON_UNKNOWN_EPISODE),
        ({"episode_id": str(uuid.uuid4())}, pb.REJECTION_REASON_UNKNOWN_EPISODE),
        ({"media_url": "https://elsewhere.example.com/x.mp3"}, pb.REJECTION_REASON_UNKNOWN_EPISODE),
        ({"client_ip": ""}, pb.REJECTION_REASON_INVALID_CLIENT_IP),
        ({"client_ip": "example.com"}, pb.REJECTION_REASON_INVALID_CLIENT_IP),
        ({"http_method": ""}, pb.REJECTION_REASON_INVALID_METHOD),
        ({"http_method": "GET /x"}, pb.REJECTION_REASON_INVALID_METHOD),
        ({"status_code": 99}, pb.REJECTION_REASON_INVALID_STATUS),
        ({"range": "bytes=10-5"}, pb.REJECTION_REASON_INVALID_RANGE),
        ({"range": "items=0-1"}, pb.REJECTION_REASON_INVALID_RANGE),
        ({"bytes_served": -1}, pb.REJECTION_REASON_INVALID_BYTES_SERVED),
        ({"country_code": "XQ"}, pb.REJECTION_REASON_INVALID_LOCATION),
        ({"region_code": "CA-ON"}, pb.REJECTION_REASON_INVALID_LOCATION),
        ({"referer": "r" * 2049}, pb.REJECTION_REASON_FIELD_TOO_LONG),
        ({"media_url": "u" * 2049}, pb.REJECTION_REASON_FIELD_TOO_LONG),
    ],
)
async def test_a_bad_record_is_rejected_with_its_reason(
    fields: dict[str, object], reason: pb.RejectionReason
) -> None:
    bad = record(**{k: v for k, v in fields.items() if v is not None})
    if fields.get("request_time", True) is None:
        bad.ClearField("request_time")
    if "episode_id" in fields and not fields["episode_id"]:
        bad.episode_id = ""

    checked = await check([record(), bad, record()])

    assert [(r.index, r.reason) for r in checked.rejections] == [(1, reason)]
    assert checked.rejections[0].message
    assert len(checked.rows) == len(checked.requests) == 2


async def test_good_records_are_anonymised_and_normalised() -> None:
    records = [
        record(client_ip="2001:db8:1:2:aaaa::1", country_code="de", region_code="de-by"),
        record(client_ip="2001:db8:1:2:bbbb::9", media_url=URL, country_code="ZZ"),
        record(client_ip="192.0.2.10", country_code="", http_method="HEAD", status_code=404),
    ]

    checked = await check(records)

    assert checked.rejections == []
    first, second, third = checked.requests
    # One /64, one User-Agent: one listener.
    assert first.listener_id == second.listener_id
    assert first.listener_id != third.listener_id
    assert [r[13:] for r in checked.rows] == [("DE", "DE-BY"), ("", ""), ("", "")]
    assert [r.country for r in checked.requests] == ["DE", "ZZ", "ZZ"]
    assert {r[2] for r in checked.rows} == {EPISODE.episode_id}
    stored = repr(checked.rows) + repr(checked.requests)
    assert "2001:db8" not in stored
    assert "192.0.2.10" not in stored


async def test_a_record_repeated_in_its_batch_is_a_duplicate() -> None:
    repeated = record()

    checked = await check([repeated, record(), repeated])

    assert checked.duplicates == 1
    assert [r.request_id for r in checked.requests].count(repeated.id) == 1


async def test_excluded_addresses_are_flagged_on_arrival() -> None:
    checked = await check(
        [record(client_ip="203.0.113.7"), record(client_ip="198.51.100.7")],
        IpExclusions(["203.0.113.0/24"]),
    )

    assert [r.ip_excluded for r in checked.requests] == [True, False]


def test_episode_references_leave_out_what_cannot_resolve() -> None:
    ids, urls = episode_references(
        [
            record(episode_id=EPISODE.episode_id.upper()),
            record(episode_id="nope"),
            record(media_url=URL),
            record(media_url="u" * 2049),
        ]
    )

    assert ids == {EPISODE.episode_id}
    assert urls == {URL}


@pytest.mark.parametrize(
    ("header", "valid"),
    [
        ("bytes=0-1", True),
        ("bytes=100-", True),
        ("bytes=100-199", True),
        ("bytes=-500", True),
        ("bytes=0-1, 5-9", True),
        ("bytes=9-1", False),
        ("bytes=", False),
        ("bytes=a-b", False),
        ("lines=0-1", False),
    ],
)
def test_byte_ranges(header: str, valid: bool) -> None:
    assert is_byte_range(header) is valid


@pytest.mark.parametrize("window", [CountingWindow.UTC_DAY, CountingWindow.ROLLING_24H])
def test_counting_state_survives_encoding(window: CountingWindow) -> None:
    episode = str(uuid.uuid4())
    media = EpisodeMedia(
        episode,
        size_bytes=28_850_000,
        id3_size_bytes=50_000,
        bitrate_bps=128_000,
        duration_s=1800.0,
        ad_slots=(AdSlot(str(uuid.uuid4()), AdInsertion.DYNAMIC, 50_000, 530_000),),
    )
    requests = [
        ListenerRequest.from_raw(
            request_id=str(n),
            time_us=NOW_US + n * 60_000_000,
            episode_id=episode,
            client_ip=f"192.0.2.{n % 3}",
            user_agent=AGENT,
            hasher=HASHER,
            status=206,
            range_header=f"bytes={n * 400_000}-",
            bytes_served=500_000,
            country_code="GB",
        )
        for n in range(12)
    ]
    accumulator = DownloadAccumulator(compile_rules(CountingSettings(window=window)))
    windows = accumulator.apply(requests, {episode: media}).changed_windows
    assert any(w.counted for w in windows)

    for state in windows:
        back = decode(encode(state))
        assert back.to_dict() == state.to_dict()
        assert back.download == state.download
