"""Media URL matching unwraps Podmesh's own measurement prefix, alone and chained."""

from __future__ import annotations

import uuid

import pytest

from services.catalog.urls import normalize_media_url
from services.shared.measurement_prefix import prefix_id, prefixed_url

FILE = "cdn.example.com/show/ep-1.mp3"
PREFIX = prefix_id(uuid.UUID("0b6f1d2e-6a43-4c59-9a7e-2f1f5c3d4e5a"))


@pytest.mark.parametrize(
    "url",
    [
        f"https://gw.podmesh.example/e/{PREFIX}/{FILE}",
        f"http://127.0.0.1:8080/e/{PREFIX}/{FILE}?_from=rss",
        f"https://gw.podmesh.example/e/{PREFIX}/https://{FILE}",
        f"https://gw.podmesh.example/e/{PREFIX}/http:/{FILE}",
        # Chained, in either order and through several others.
        f"https://gw.podmesh.example/e/{PREFIX}/op3.dev/e/{FILE}",
        f"https://op3.dev/e/gw.podmesh.example/e/{PREFIX}/{FILE}",
        f"https://gw.podmesh.example/e/{PREFIX}/op3.dev/e/dts.podtrac.com/redirect.mp3/{FILE}",
        f"https://dts.podtrac.com/redirect.mp3/gw.podmesh.example/e/{PREFIX}/chrt.fm/track/X/{FILE}",
        prefixed_url("https://gw.podmesh.example", uuid.uuid4(), f"https://{FILE}"),
    ],
)
def test_podmesh_prefix_is_unwrapped(url: str) -> None:
    assert normalize_media_url(url) == FILE


@pytest.mark.parametrize(
    "url",
    [
        # Not a prefix id: a host's own /e/ directory stays a file path.
        f"https://cdn.example.com/e/episodes/{FILE}",
        f"https://cdn.example.com/e/pmshort/{FILE}",
        f"https://cdn.example.com/e/{PREFIX.upper()}/{FILE}",
    ],
)
def test_paths_that_only_look_like_the_prefix_are_kept(url: str) -> None:
    assert normalize_media_url(url) == url.removeprefix("https://")


def test_a_prefix_with_nothing_after_it_is_kept() -> None:
    url = f"https://gw.podmesh.example/e/{PREFIX}/"
    assert normalize_media_url(url) == f"gw.podmesh.example/e/{PREFIX}/"
