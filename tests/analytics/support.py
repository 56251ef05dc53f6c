"""Builders shared by the counting tests: listener requests, episodes and User-Agents."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from services.analytics.counting import (
    AdInsertion,
    AdSlot,
    EpisodeMedia,
    IpHasher,
    ListenerRequest,
    to_us,
)

SECRET = b"test-platform-secret-0123456789"
TENANT = "4b0c6a5e-3f4e-4a61-9c0e-1f0d2a3b4c5d"
HASHER = IpHasher(SECRET, TENANT)

APPLE_PODCASTS = "Podcasts/1650.20 CFNetwork/1408.0.4 Darwin/22.5.0"
SPOTIFY = "Spotify/8.8.20.544 Android/33 (SM-G991B)"
OVERCAST = "Overcast/3.0 (+http://overcast.fm/; iOS podcast app)"
POCKET_CASTS = "PocketCasts/7.43 (iPhone; iOS 16.5)"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/114.0.0.0 Safari/537.36"
)
ANTENNAPOD = "AntennaPod/3.0.1"
CURL = "curl/8.1.2"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
APPLE_WATCH = "atc/1.0 watchOS/7.3.3 model/Watch5,9 hwp/t8006 build/18S830 (6; dt:204)"

LISTENER_AGENTS = (APPLE_PODCASTS, SPOTIFY, OVERCAST, POCKET_CASTS, CHROME, ANTENNAPOD)
BOT_AGENTS = (CURL, GOOGLEBOT, "python-requests/2.31.0", "okhttp/4.11.0")

ID3 = 100_000
BITRATE = 128_000
THRESHOLD = ID3 + BITRATE * 60 // 8
SIZE = ID3 + BITRATE * 1800 // 8

# A 30-minute episode with a dynamic pre-roll, a baked-in ad in the first
# quarter and a dynamic mid-roll.
EPISODE = EpisodeMedia(
    "ep-1",
    size_bytes=SIZE,
    id3_size_bytes=ID3,
    bitrate_bps=BITRATE,
    duration_s=1800.0,
    ad_slots=(
        AdSlot("pre", AdInsertion.DYNAMIC, ID3, ID3 + 479_999),
        AdSlot("host-read", AdInsertion.BAKED_IN, 5_000_000, 5_959_999),
        AdSlot("mid", AdInsertion.DYNAMIC, 15_000_000, 15_479_999),
    ),
)
# Nothing known but the id: only a complete 200 response counts.
UNKNOWN_EPISODE = EpisodeMedia("ep-unknown")
MEDIA = {EPISODE.episode_id: EPISODE, UNKNOWN_EPISODE.episode_id: UNKNOWN_EPISODE}

_ids = itertools.count()


def at(text: str) -> int:
    """Microseconds of an ISO time; UTC unless it says otherwise."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return to_us(moment)


def request(
    time: str | int = "2024-03-04T10:00:00",
    *,
    ip: str = "203.0.113.7",
    ua: str = APPLE_PODCASTS,
    episode: str = "ep-1",
    method: str = "GET",
    status: int = 200,
    range_header: str = "",
    bytes_served: int = SIZE,
    country: str = "",
    request_id: str | None = None,
) -> ListenerRequest:
    """A request as ingestion would build it (a fresh id unless given)."""
    return ListenerRequest.from_raw(
        request_id=request_id or f"r{next(_ids)}",
        time_us=at(time) if isinstance(time, str) else time,
        episode_id=episode,
        client_ip=ip,
        user_agent=ua,
        hasher=HASHER,
        method=method,
        status=status,
        range_header=range_header,
        bytes_served=bytes_served,
        country_code=country,
    )


def ranged(
    first: int,
    last: int,
    time: str | int = "2024-03-04T10:00:00",
    *,
    ip: str = "203.0.113.7",
    ua: str = APPLE_PODCASTS,
    episode: str = "ep-1",
    country: str = "",
) -> ListenerRequest:
    """A 206 request that delivered bytes first..last."""
    return request(
        time,
        ip=ip,
        ua=ua,
        episode=episode,
        country=country,
        status=206,
        range_header=f"bytes={first}-{last}",
        bytes_served=last - first + 1,
    )
