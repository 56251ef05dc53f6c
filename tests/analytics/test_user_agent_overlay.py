"""Our overlay on the OPAWG lists: every rule does what its reason says, and no more."""

from __future__ import annotations

from typing import Any

import pytest

from services.analytics.counting import FilterReason, RequestFilter, default_classifier
from services.analytics.counting.user_agents import (
    AGENT_FILES,
    UserAgentClassifier,
    js_pattern,
    load_list,
    load_overlay,
)

OVERLAY = load_overlay()

# A User-Agent whose first matching device entry is each device the overlay names.
DEVICE_EXAMPLES = {
    "Apple HomePod": "AirPodcasts/4022.700.8 CFNetwork/1410.0.3 Darwin/22.6.0",
    "Apple iPad": "AppleCoreMedia/1.0.0.20F66 (iPad; U; CPU OS 16_5 like Mac OS X; en_us)",
    "Apple TV": "AppleCoreMedia/1.0.0.20K71 (Apple TV; U; CPU OS 16_1 like Mac OS X; en_us)",
    "Apple iPhone": "Podcasts/1650.20 CFNetwork/1408.0.4 Darwin/22.5.0",
    "Apple Watch": "SomePlayer/2.0 (Watch OS 10)",
    "Apple iPod": "AppleCoreMedia/1.0.0.9B206 (iPod; U; CPU OS 5_1_1 like Mac OS X; en_us)",
    "Apple Computer": "Spotify/1.1.89.862 OSX_ARM64/OS X 13.4.1 [arm 2]",
    "Google Chromebook": (
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/114.0.0.0 Safari/537.36"
    ),
    "Android Tablet": "Mozilla/5.0 (Linux; Android 13; SM-X700) Tablet AppleWebKit/537.36",
    "Android Phone": "Spotify/8.8.20.544 Android/33 (SM-G991B)",
    "Windows Computer": "Spotify/1.2.13.661 Win32_x86_64/0 (PC desktop)",
}


def _rule_ids(rules: list[dict[str, Any]], key: str) -> list[str]:
    return [rule[key] for rule in rules]


@pytest.mark.parametrize("rule", OVERLAY["bots"], ids=_rule_ids(OVERLAY["bots"], "name"))
def test_overlay_bot_rule_drops_its_example_which_no_list_names(rule: dict[str, Any]) -> None:
    assert rule["reason"]
    example = rule["example"]
    info = default_classifier().classify(example)
    assert (info.bot, info.bot_rule) == (True, rule["name"])
    assert RequestFilter().user_agent_reason(example) is FilterReason.BOT
    for name in AGENT_FILES:
        assert not any(js_pattern(e["pattern"], e["name"]).search(example) for e in load_list(name))


def test_overlay_bot_rules_never_touch_an_agent_a_list_names() -> None:
    classifier = UserAgentClassifier(
        lists={"apps": [{"name": "Probe App", "pattern": "^kube-probe/"}]},
        overlay={"bots": OVERLAY["bots"]},
        version="test",
    )
    assert not classifier.classify("kube-probe/1.27").bot


@pytest.mark.parametrize(
    "rule", OVERLAY["operating_systems"], ids=_rule_ids(OVERLAY["operating_systems"], "device")
)
def test_overlay_os_rule_names_the_os_of_its_device(rule: dict[str, Any]) -> None:
    assert rule["reason"]
    example = DEVICE_EXAMPLES[rule["device"]]
    classifier = default_classifier()
    assert classifier._devices.first(example).name == rule["device"]  # type: ignore[union-attr]
    assert classifier.classify(example).os == rule["os"]


def test_an_os_rule_for_a_device_the_lists_do_not_have_is_refused() -> None:
    devices = [{"name": "Phone", "pattern": "Phone", "category": "mobile"}]
    overlay = {"operating_systems": [{"device": "Fridge", "os": "FridgeOS"}]}
    with pytest.raises(ValueError, match="no device 'Fridge'"):
        UserAgentClassifier(lists={"devices": devices}, overlay=overlay, version="test")


def test_the_overlay_version_is_part_of_the_recorded_version() -> None:
    assert default_classifier().version.endswith(f"+podmesh-overlay.{OVERLAY['version']}")
