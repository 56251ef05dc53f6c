"""Media URL normalisation: every way a listener can request one file is one key."""

from __future__ import annotations

import pytest

from services.catalog.urls import TRACKING_PREFIXES, is_http_url, normalize_media_url

FILE = "cdn.example.com/show/ep-1.mp3"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Scheme, host case, default ports, query and fragment do not matter.
        (f"https://{FILE}", FILE),
        (f"http://{FILE}", FILE),
        ("HTTPS://CDN.Example.COM/show/ep-1.mp3", FILE),
        ("https://cdn.example.com:443/show/ep-1.mp3", FILE),
        ("http://cdn.example.com:80/show/ep-1.mp3", FILE),
        (f"https://{FILE}?utm_source=rss&updated=1700000000", FILE),
        (f"https://{FILE}#t=30", FILE),
        (f"  https://{FILE}  ", FILE),
        ("https://cdn.example.com./show/ep-1.mp3", FILE),
        # What a listener request log often holds: no scheme at all.
        (FILE, FILE),
        # Path case and other ports do matter.
        ("https://cdn.example.com/show/EP-1.mp3", "cdn.example.com/show/EP-1.mp3"),
        ("https://cdn.example.com:8443/show/ep-1.mp3", "cdn.example.com:8443/show/ep-1.mp3"),
        ("https://cdn.example.com/a%2fb.mp3", "cdn.example.com/a%2Fb.mp3"),
        ("https://cdn.example.com", "cdn.example.com/"),
        ("http://[2001:db8::1]:8080/ep.mp3", "[2001:db8::1]:8080/ep.mp3"),
        # Measurement prefixes.
        (f"https://dts.podtrac.com/redirect.mp3/{FILE}", FILE),
        (f"https://www.podtrac.com/pts/redirect.mp3/{FILE}", FILE),
        (f"https://dts.podtrac.com/redirect.m4a/{FILE}?x=1", FILE),
        (f"https://chrt.fm/track/ABC123/{FILE}", FILE),
        (f"https://chtbl.com/track/9E3B7/{FILE}", FILE),
        (f"https://media.blubrry.com/myshow/{FILE}", FILE),
        (f"https://media.blubrry.com/myshow/p/{FILE}", FILE),
        (f"https://pdst.fm/e/{FILE}", FILE),
        (f"https://op3.dev/e/{FILE}", FILE),
        (f"https://op3.dev/e/https://{FILE}", FILE),
        (f"https://op3.dev/e,pg=8a5a2fa0-2d1e-5c0e-9b57-6d1d9fbc1c55/{FILE}", FILE),
        (f"https://pscrb.fm/rss/p/{FILE}", FILE),
        (f"https://prfx.byspotify.com/e/{FILE}", FILE),
        (f"https://mgln.ai/e/89/{FILE}", FILE),
        ("https://op3.dev/e/HTTP://CDN.EXAMPLE.COM:80/show/ep-1.mp3", FILE),
        # Prefixes stack.
        (f"https://dts.podtrac.com/redirect.mp3/chrt.fm/track/X1/pdst.fm/e/{FILE}?a=b", FILE),
        (f"https://pdst.fm/e/chtbl.com/track/1/op3.dev/e/https://{FILE}", FILE),
        # A prefix host's own pages are not prefixes.
        ("https://chrt.fm/about", "chrt.fm/about"),
        ("https://op3.dev/e/", "op3.dev/e/"),
        ("https://dts.podtrac.com/redirect.mp3/", "dts.podtrac.com/redirect.mp3/"),
    ],
)
def test_normalize_media_url(url: str, expected: str) -> None:
    assert normalize_media_url(url) == expected


def test_every_prefix_is_covered_above() -> None:
    hosts = {host for prefix in TRACKING_PREFIXES for host in prefix.hosts}
    assert "dts.podtrac.com" in hosts
    assert "op3.dev" in hosts
    for prefix in TRACKING_PREFIXES:
        example = next(iter(prefix.hosts))
        assert prefix.path.pattern.startswith("^/"), prefix.name
        assert normalize_media_url(f"https://{example}/nothing-here") == f"{example}/nothing-here"


@pytest.mark.parametrize("url", ["", "https://", "/just/a/path", "http:///x.mp3"])
def test_a_url_without_host_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="no host"):
        normalize_media_url(url)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://example.com/feed.xml", True),
        ("http://127.0.0.1:8080/x", True),
        ("ftp://example.com/feed.xml", False),
        ("example.com/feed.xml", False),
        ("https://exa mple.com/", False),
        ("https://example.com:99999/", False),
        ("https://example.com:0/", False),
        ("https://" + "a" * 2048 + ".com/", False),
        ("javascript:alert(1)", False),
    ],
)
def test_is_http_url(url: str, ok: bool) -> None:
    assert is_http_url(url) is ok
