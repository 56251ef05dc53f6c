"""Media URLs as listener requests are matched on them.

A podcast app requests whatever the feed's enclosure says, often wrapped in one
or more measurement redirects (podtrac, chartable, op3, ...), over http or https,
with a query string that changes per request. The catalog stores each episode's
URL in a normalised form that all of these variants reduce to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.shared.measurement_prefix import PATH_PREFIX, PREFIX_ID_PATTERN

MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
# The scheme is ignored in matching, so neither default port distinguishes a file.
_IGNORED_PORTS = frozenset(_DEFAULT_PORTS.values())
# Prefixes stack (a podtrac redirect to a chartable redirect to the host); more
# than this many is not a feed, it is a loop.
_MAX_UNWRAPS = 8
_PERCENT_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")
# What follows a prefix must start like a URL or a host name, else the path is
# the prefix service's own and is left alone.
_WRAPPED = re.compile(
    r"^(?:(?P<scheme>https?):/{1,2})?(?P<rest>[^/?#]+\.[^/?#]+(?:[/?#].*)?)$", re.IGNORECASE
)


@dataclass(frozen=True)
class TrackingPrefix:
    """A measurement redirect: requests to `hosts` whose path starts with `path`
    are redirected to the URL that follows it."""

    name: str
    hosts: frozenset[str]
    path: re.Pattern[str]


def _prefix(name: str, hosts: tuple[str, ...], path: str) -> TrackingPrefix:
    return TrackingPrefix(name, frozenset(hosts), re.compile("^/" + path, re.IGNORECASE))


TRACKING_PREFIXES: tuple[TrackingPrefix, ...] = (
    _prefix(
        "podtrac",
        ("dts.podtrac.com", "www.podtrac.com", "podtrac.com"),
        r"(?:pts/)?redirect\.[a-z0-9]+/",
    ),
    _prefix("chartable", ("chrt.fm", "chtbl.com"), r"track/[^/]+/"),
    _prefix("blubrry", ("media.blubrry.com",), r"[^/]+/(?:p/)?"),
    _prefix("podsights", ("pdst.fm",), r"e/"),
    _prefix("op3", ("op3.dev",), r"e(?:,[^/]*)?/"),
    _prefix("podscribe", ("pscrb.fm", "verifi.podscribe.com"), r"rss/p/"),
    _prefix("spotify", ("prfx.byspotify.com",), r"e/"),
    _prefix("magellan", ("mgln.ai",), r"e/[^/]+/"),
)  # fmt: skip
_BY_HOST = {host: prefix for prefix in TRACKING_PREFIXES for host in prefix.hosts}
# Podmesh's own prefix is served by each deployment's gateway, whatever its host name:
# it is known by its path, whose prefix id no media file's path has by chance.
_PODMESH_PREFIX = re.compile(f"^{PATH_PREFIX}{PREFIX_ID_PATTERN}/")


def is_http_url(value: str) -> bool:
    """An absolute http(s) URL with a host, as feeds and media files must be."""
    if not value or len(value) > MAX_URL_LENGTH:
        return False
    # Whitespace and control characters (NUL included) are never part of a URL.
    if any(c.isspace() or c < " " or c == "\x7f" for c in value):
        return False
    try:
        parts = urlsplit(value)
        # .port raises ValueError for a malformed or out-of-range port.
        return parts.scheme.lower() in _DEFAULT_PORTS and bool(parts.hostname) and parts.port != 0
    except ValueError:
        return False


def _unwrap(url: str) -> str | None:
    """The URL a measurement prefix redirects to, or None when `url` has none."""
    parts = urlsplit(url)
    prefix = _BY_HOST.get((parts.hostname or "").rstrip("."))
    match = (prefix.path if prefix is not None else _PODMESH_PREFIX).match(parts.path)
    if match is None:
        return None
    remainder = parts.path[match.end() :]
    wrapped = _WRAPPED.match(remainder)
    if wrapped is None:
        return None
    return f"{wrapped['scheme'] or 'http'}://{wrapped['rest']}"


def normalize_media_url(url: str) -> str:
    """host[:port]/path of the media file behind `url`.

    Ignored: the scheme, the query string, the fragment, a default port, the
    case of the host, and measurement prefixes. The path keeps its case (servers
    treat /Ep1.mp3 and /ep1.mp3 as different files). A URL without a scheme is
    read as http. Raises ValueError when there is no host to match on.
    """
    text = url.strip()
    if "://" not in text:
        # "/show/ep.mp3" is a path on no known host, not a host named "show".
        text = "http://" + text if not text.startswith("/") else ""
    for _ in range(_MAX_UNWRAPS):
        inner = _unwrap(text)
        if inner is None:
            break
        text = inner
    parts = urlsplit(text)
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError(f"no host in {url!r}")
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and port not in _IGNORED_PORTS:
        host = f"{host}:{port}"
    path = _PERCENT_ESCAPE.sub(lambda m: m.group(0).upper(), parts.path or "/")
    return host + path


def try_normalize_media_url(url: str) -> str | None:
    try:
        return normalize_media_url(url)
    except ValueError:
        return None
