"""The shipped OPAWG user-agents-v2 lists, measured with their own example strings.

The targets: bots and bot-category libraries filtered (at least 99%), app examples
wrongly dropped (at most 0.1%), app examples named as the lists name them (at
least 95%). Every pattern must compile in Python and match its own examples, and
the classifier's first-character index must pick what a plain scan picks.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from services.analytics.counting import FilterReason, RequestFilter, default_classifier
from services.analytics.counting.user_agents import (
    LISTS_DIR,
    UPSTREAM,
    js_pattern,
    lists_commit,
    load_list,
)

FILES = ("bots", "apps", "libraries", "browsers", "devices", "referrers")
FILTER = RequestFilter()


def _examples(name: str, bots_only: bool = False) -> list[tuple[str, str]]:
    return [
        (entry["name"], example)
        for entry in load_list(name)
        if not bots_only or entry.get("category") == "bot"
        for example in entry.get("examples", [])
    ]


@pytest.mark.parametrize("name", FILES)
def test_every_pattern_compiles_and_matches_its_own_examples(name: str) -> None:
    entries = load_list(name)
    assert entries
    failures = [
        (entry["name"], example)
        for entry in entries
        for example in entry.get("examples", [])
        if not js_pattern(entry["pattern"], entry["name"]).search(example)
    ]
    assert failures == []


def test_bots_and_bot_libraries_are_filtered() -> None:
    examples = _examples("bots") + _examples("libraries", bots_only=True)
    kept = [ua for _, ua in examples if FILTER.user_agent_reason(ua) is None]
    assert len(examples) > 300
    assert 1 - len(kept) / len(examples) >= 0.99, kept


def test_app_examples_are_almost_never_dropped() -> None:
    examples = _examples("apps")
    dropped = [(n, ua) for n, ua in examples if FILTER.user_agent_reason(ua) is not None]
    assert len(examples) > 900
    assert len(dropped) / len(examples) <= 0.001, dropped


def test_app_examples_are_named_as_the_lists_name_them() -> None:
    examples = _examples("apps")
    classify = default_classifier().classify
    wrong = [(n, ua, classify(ua).app) for n, ua in examples if classify(ua).app != n]
    assert 1 - len(wrong) / len(examples) >= 0.95, wrong[:20]


def test_the_first_character_index_picks_what_a_plain_scan_picks() -> None:
    classifier = default_classifier()
    lists = (*classifier._agents, classifier._devices, classifier._referrers)
    texts = [example for name in FILES for _, example in _examples(name)]
    texts += ["", "x", "Mozilla/5.0", "^", " leading space"]
    for entries in lists:
        for text in texts:
            plain = next((e for e in entries.entries if e.pattern.search(text)), None)
            assert entries.first(text) is plain, text


def test_bot_library_examples_report_the_bot_reason() -> None:
    reasons = {FILTER.user_agent_reason(ua) for _, ua in _examples("libraries", bots_only=True)}
    assert reasons == {FilterReason.BOT}


def test_the_lists_ship_with_their_licence_and_upstream_commit() -> None:
    licence = (LISTS_DIR / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License")
    assert "Open Podcast Analytics Working Group" in licence
    commit = lists_commit()
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    assert default_classifier().version.startswith(f"{UPSTREAM}@{commit}+podmesh-overlay.")


def test_only_data_is_shipped_from_upstream() -> None:
    shipped = {path.name for path in Path(LISTS_DIR).iterdir()}
    assert shipped == {f"{name}.json" for name in FILES} | {
        "patterns.schema.json",
        "LICENSE",
        "COMMIT",
    }


def test_update_user_agents_fails_clearly_without_changing_anything(tmp_path: Path) -> None:
    # A port nothing listens on stands for a machine without internet access.
    (tmp_path / "COMMIT").write_text("unchanged\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "update-user-agents",
            "OPAWG_REPO=https://127.0.0.1:9/opawg/user-agents-v2.git",
            f"OPAWG_DIR={tmp_path}",
            "OPAWG_TIMEOUT_S=10",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "could not fetch https://127.0.0.1:9/opawg/user-agents-v2.git" in done.stderr
    assert f"{tmp_path} is unchanged" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["COMMIT"]
    assert (tmp_path / "COMMIT").read_text() == "unchanged\n"
