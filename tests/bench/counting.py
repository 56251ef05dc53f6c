"""Micro-benchmark of the counting core: ``python -m tests.bench.counting``.

Generates 200,000 synthetic listener requests shaped like CDN logs of a
podcast host (full GETs, Apple-style probe then open range, players fetching
1 MB chunks, HEADs and 404s, bots, play-pause-play repeats, a long tail of
User-Agents), then feeds them to the incremental accumulator in batches of
5,000 in arrival order, as ingestion would. Only ``apply`` is timed for the
headline figure (best of three passes); building the records (IP hashing
included) and the batch function over all requests are timed and printed
apart.

Prints ``counting_requests_per_s: N`` and a few context lines, among them the
User-Agent classifications per second before the cache (``counting_user_agents_uncached_per_s``,
every distinct agent of the run through the OPAWG lists once): the price of
each new agent string, which the headline figure's best pass does not pay.
``BENCH_SCALE`` (default 1) scales the number of requests.
"""

from __future__ import annotations

import gc
import os
import random
import time
from collections.abc import Iterator

from services.analytics.counting import (
    AdInsertion,
    AdSlot,
    CountingSettings,
    DownloadAccumulator,
    EpisodeMedia,
    IpHasher,
    ListenerRequest,
    UserAgentClassifier,
    count_downloads,
)

# BENCH_SCALE shrinks the run for a quick look, as for every `make bench` benchmark.
REQUESTS = max(5_000, int(200_000 * float(os.environ.get("BENCH_SCALE", "1"))))
BATCH = 5_000
PASSES = 3
SEED = 20240304
START_US = 1_709_510_400_000_000  # 2024-03-04T00:00:00Z
DAY_US = 86_400_000_000
MB = 1_000_000

# (weight, User-Agent); bots and HTTP libraries make up about 8% of requests.
AGENTS: list[tuple[int, str]] = [
    (30, "Podcasts/1650.20 CFNetwork/1408.0.4 Darwin/22.5.0"),
    (8, "Podcasts/4023.400.39 CFNetwork/1494.0.7 Darwin/23.4.0"),
    (4, "AppleCoreMedia/1.0.0.20F66 (iPhone; U; CPU OS 16_5 like Mac OS X; en_us)"),
    (12, "Spotify/8.8.20.544 Android/33 (SM-G991B)"),
    (6, "Spotify/8.8.12 iOS/16.5 (iPhone14,2)"),
    (5, "Overcast/3.0 (+http://overcast.fm/; iOS podcast app)"),
    (4, "PocketCasts/7.43 (iPhone; iOS 16.5)"),
    (3, "CastBox/8.38.0-210921071 (Linux;Android 11) ExoPlayerLib/2.10.4"),
    (3, "PodcastAddict/v5 (+https://podcastaddict.com/; Android podcast app)"),
    (2, "AlexaMediaPlayer/2.1.4676.0 (Linux;Android 5.1.1) ExoPlayerLib/1.5.9"),
    (2, "iHeartRadio/10.19.0 (iPhone; iOS 16.5; iPhone14,5)"),
    (2, "Linux UPnP/1.0 Sonos/70.3-35220 (ZPS1)"),
    (
        3,
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/114.0.0.0 Safari/537.36",
    ),
    (1, "atc/1.0 watchOS/7.3.3 model/Watch5,9 hwp/t8006 build/18S830 (6; dt:204)"),
    (3, "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
    (2, "curl/8.1.2"),
    (2, "python-requests/2.31.0"),
    (1, "okhttp/4.11.0"),
]


def _long_tail(rng: random.Random) -> str:
    # Versions and devices vary, so the User-Agent cache also sees misses.
    build = rng.randint(1000, 1999)
    return (
        f"Podcasts/{build}.{rng.randint(0, 9)} CFNetwork/1408.0.4 Darwin/22.{rng.randint(0, 6)}.0"
    )


def _ipv4(rng: random.Random) -> str:
    return ".".join(str(rng.randint(1, 223 if i == 0 else 254)) for i in range(4))


def _ipv6(rng: random.Random) -> str:
    groups = (rng.randrange(0x10000), rng.randrange(0x10000), rng.randrange(1, 0x10000))
    return "2001:db8:{:x}:{:x}::{:x}".format(*groups)


def _episodes(rng: random.Random) -> dict[str, EpisodeMedia]:
    media = {}
    for n in range(200):
        bitrate = rng.choice([64_000, 96_000, 128_000, 192_000])
        duration = rng.randint(5, 90) * 60
        id3 = rng.randint(20_000, 400_000)
        size = id3 + bitrate * duration // 8
        pre_end = id3 + bitrate * 30 // 8 - 1
        mid = id3 + size // 2
        media[f"ep-{n}"] = EpisodeMedia(
            f"ep-{n}",
            size_bytes=size,
            id3_size_bytes=id3,
            bitrate_bps=bitrate,
            duration_s=float(duration),
            ad_slots=(
                AdSlot(f"ep-{n}-pre", AdInsertion.DYNAMIC, id3, pre_end),
                AdSlot(f"ep-{n}-mid", AdInsertion.DYNAMIC, mid, mid + bitrate * 60 // 8 - 1),
            ),
        )
    return media


def _session(
    rng: random.Random, episode: EpisodeMedia, start_us: int
) -> Iterator[tuple[int, str, int, str, int]]:
    """(time, method, status, range, bytes served) of one listening session."""
    size = episode.size_bytes
    shape = rng.random()
    if shape < 0.40:
        served = size if rng.random() < 0.8 else rng.randint(1, size)
        yield start_us, "GET", 200, "", served
    elif shape < 0.75:
        yield start_us, "GET", 206, "bytes=0-1", 2
        yield start_us + 200_000, "GET", 206, "bytes=0-", rng.randint(MB // 2, size)
    elif shape < 0.93:
        offset = 0
        at_us = start_us
        for _ in range(rng.randint(1, 12)):
            last = min(offset + MB - 1, size - 1)
            yield at_us, "GET", 206, f"bytes={offset}-{last}", last - offset + 1
            offset = last + 1
            at_us += rng.randint(1, 30) * 1_000_000
            if offset >= size:
                break
    elif shape < 0.97:
        yield start_us, "HEAD", 200, "", 0
    else:
        yield start_us, "GET", 404, "", 0


Row = tuple[int, str, str, str, str, str, int, str, int]


def synthetic_rows(
    n: int = REQUESTS, seed: int = SEED
) -> tuple[list[Row], dict[str, EpisodeMedia]]:
    """``n`` raw requests in arrival order, and the media facts of their episodes."""
    rng = random.Random(seed)
    media = _episodes(rng)
    episode_ids = list(media)
    popularity = [1.0 / (rank + 1) for rank in range(len(episode_ids))]
    weights, agents = zip(*AGENTS, strict=True)
    listeners = []
    for _ in range(n // 6):
        ip = _ipv4(rng) if rng.random() < 0.7 else _ipv6(rng)
        agent = _long_tail(rng) if rng.random() < 0.05 else rng.choices(agents, weights)[0]
        listeners.append((ip, agent, rng.choice(["US", "US", "GB", "DE", "CA", "AU", ""])))
    rows: list[Row] = []
    while len(rows) < n:
        ip, agent, country = rng.choice(listeners)
        episode = media[rng.choices(episode_ids, popularity)[0]]
        start_us = START_US + rng.randrange(2 * DAY_US)
        sessions = 1 if rng.random() < 0.8 else rng.randint(2, 3)
        for s in range(sessions):
            session_start = start_us + s * rng.randint(10, 600) * 60_000_000
            for at_us, method, status, range_header, served in _session(
                rng, episode, session_start
            ):
                rows.append(
                    (
                        at_us,
                        ip,
                        agent,
                        country,
                        episode.episode_id,
                        method,
                        status,
                        range_header,
                        served,
                    )
                )
    rows = rows[:n]
    # Log shippers deliver roughly in time order, with stragglers.
    rows.sort(key=lambda row: row[0] + rng.randrange(120_000_000))
    return rows, media


def build(rows: list[Row], first_id: int = 0) -> list[ListenerRequest]:
    """The rows as ingestion turns them into records (IP hashing included)."""
    hasher = IpHasher(
        b"benchmark-platform-secret-0123456789", "4b0c6a5e-3f4e-4a61-9c0e-1f0d2a3b4c5d"
    )
    return [
        ListenerRequest.from_raw(
            request_id=f"req-{first_id + i}",
            time_us=at_us,
            episode_id=episode_id,
            client_ip=ip,
            user_agent=agent,
            hasher=hasher,
            method=method,
            status=status,
            range_header=range_header,
            bytes_served=served,
            country_code=country,
        )
        for i, (
            at_us,
            ip,
            agent,
            country,
            episode_id,
            method,
            status,
            range_header,
            served,
        ) in enumerate(rows)
    ]


def accumulate(
    rows: list[Row], media: dict[str, EpisodeMedia]
) -> tuple[float, float, int, int, int]:
    """One pass batch by batch, as ingestion runs: each batch's records are built,
    counted and dropped, so the collector sees what it would see in the service.

    Returns seconds building, seconds applying, downloads, ads, open windows.
    """
    gc.collect()
    accumulator = DownloadAccumulator(CountingSettings())
    downloads = ads = 0
    build_s = apply_s = 0.0
    for offset in range(0, len(rows), BATCH):
        built = time.perf_counter()
        batch = build(rows[offset : offset + BATCH], offset)
        started = time.perf_counter()
        delta = accumulator.apply(batch, media)
        applied = time.perf_counter()
        build_s += started - built
        apply_s += applied - started
        downloads += len(delta.downloads_added) - len(delta.downloads_removed)
        ads += len(delta.ads_added) - len(delta.ads_removed)
    return build_s, apply_s, downloads, ads, len(accumulator)


def main() -> None:
    rows, media = synthetic_rows()
    # The best of a few passes: the figure is the code's speed, not the neighbours' load.
    passes = [accumulate(rows, media) for _ in range(PASSES)]
    build_s = min(p[0] for p in passes)
    apply_s = min(p[1] for p in passes)
    _, _, downloads, ads, windows = passes[0]
    agents = sorted({row[2] for row in rows})
    classifier = UserAgentClassifier()
    classify_started = time.perf_counter()
    for agent in agents:
        classifier.classify_uncached(agent)
    classify_s = time.perf_counter() - classify_started
    requests = build(rows)
    batch_started = time.perf_counter()
    result = count_downloads(requests, media)
    batch_s = time.perf_counter() - batch_started
    if len(result.downloads) != downloads:
        raise SystemExit("the accumulator and the batch function disagree")
    print(f"counting_requests: {len(rows)}")
    print(f"counting_downloads: {downloads}")
    print(f"counting_ads_delivered: {ads}")
    print(f"counting_open_windows: {windows}")
    print(f"counting_record_build_per_s: {len(rows) / build_s:.0f}")
    print(f"counting_batch_requests_per_s: {len(rows) / batch_s:.0f}")
    print(f"counting_user_agents: {len(agents)}")
    print(f"counting_user_agents_uncached_per_s: {len(agents) / classify_s:.0f}")
    print(f"counting_requests_per_s: {len(rows) / apply_s:.0f}")


if __name__ == "__main__":
    main()
