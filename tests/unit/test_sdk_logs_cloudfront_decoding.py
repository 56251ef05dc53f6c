"""The CloudFront parser's cache of decoded User-Agents and Referers stays bounded and
never hands one line's text to another."""

from __future__ import annotations

from pathlib import Path

import pytest

from podmesh_sdk import logs
from podmesh_sdk.logs import ImportOptions, ParseStats, read_records

FIELDS = (
    "date time c-ip cs-method cs(Host) cs-uri-stem sc-status sc-bytes cs(Referer) "
    "cs(User-Agent) x-edge-request-id"
)


def test_decoded_texts_stay_right_past_the_cache_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "_MAX_DECODED", 3)
    agents = [f"Player%20{n}/1.0%20(iPhone)" for n in range(8)] * 2
    lines = [
        "\t".join(
            [
                *("2026-12-06", "10:00:00", "203.0.113.9", "GET", "cdn.example.com"),
                *("/ep.mp3", "200", "1000"),
                "https://web.example/%3Fa" if n % 2 else "-",
                agent,
                f"req{n}",
            ]
        )
        for n, agent in enumerate(agents)
    ]
    path = tmp_path / "cf.log"
    path.write_text("#Version: 1.0\n#Fields: " + FIELDS + "\n" + "\n".join(lines) + "\n")
    records = list(read_records(path, "cloudfront", ImportOptions(), ParseStats()))
    assert [r.user_agent for r in records] == [
        f"Player {n % 8}/1.0 (iPhone)" for n in range(len(agents))
    ]
    assert [r.referer for r in records] == [
        "https://web.example/?a" if n % 2 else "" for n in range(len(agents))
    ]
    assert [r.id for r in records] == [f"cf:req{n}" for n in range(len(agents))]
