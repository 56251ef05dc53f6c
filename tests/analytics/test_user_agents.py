"""The User-Agent classifier: OP3's order over the OPAWG lists, devices, web players."""

from __future__ import annotations

from typing import Any

import pytest

from services.analytics.counting import (
    DeviceClass,
    FilterReason,
    RequestFilter,
    UserAgentClassifier,
    default_classifier,
)
from services.analytics.counting.user_agents import (
    DEVICE_CATEGORIES,
    UNKNOWN,
    anchored_first_char,
    js_pattern,
    load_list,
)

M, D, S, T, U = (
    DeviceClass.MOBILE,
    DeviceClass.DESKTOP,
    DeviceClass.SMART_SPEAKER,
    DeviceClass.TV,
    DeviceClass.UNKNOWN,
)

# (User-Agent, app, device class, OS) as the shipped lists and our overlay name them.
LISTENERS: list[tuple[str, str, DeviceClass, str]] = [
    ("Podcasts/1650.20 CFNetwork/1408.0.4 Darwin/22.5.0", "Apple Podcasts", M, "iOS"),
    ("Spotify/8.8.20.544 Android/33 (SM-G991B)", "Spotify", M, "Android"),
    ("Spotify/1.2.13.661 Win32_x86_64/0 (PC desktop)", "Spotify", D, "Windows"),
    ("Overcast/3.0 (+http://overcast.fm/; iOS podcast app)", "Overcast", M, "iOS"),
    ("PocketCasts/7.43 (iPhone; iOS 16.5)", "Pocket Casts", M, "iOS"),
    ("AntennaPod/3.0.1", "AntennaPod", M, "Android"),
    ("iTunes/12.12.9 (Macintosh; OS X 13.4) AppleWebKit/615.2.9.11.7", "iTunes", D, "macOS"),
    (
        "AppleCoreMedia/1.0.0.19B74 (HomePod; U; CPU OS 15_1 like Mac OS X; en_us)",
        "AppleCoreMedia",
        S,
        "audioOS",
    ),
    (
        "AppleCoreMedia/1.0.0.20K71 (Apple TV; U; CPU OS 16_1 like Mac OS X; en_us)",
        "AppleCoreMedia",
        T,
        "tvOS",
    ),
    ("Linux UPnP/1.0 Sonos/70.3-35220 (ZPS1)", "Sonos", S, UNKNOWN),
    ("Dalvik/2.1.0 (Linux; U; Android 11; SM-G975F Build/RP1A.200720.012)", "Dalvik", M, "Android"),
    (
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/114.0.0.0 Safari/537.36",
        "Chrome",
        D,
        "ChromeOS",
    ),
    # Listeners that the hand-written rules used to drop as bots.
    ("Tweetbot/53300 CFNetwork/1335.0.3 Darwin/21.6.0", "Tweetbot", M, "iOS"),
    ("Insomniac-Radio/1.0.2 (iOS 16.7.11)", "Insomniac Radio", M, "iOS"),
    ("WhatsApp/0.3.5374 N", "WhatsApp", U, UNKNOWN),
]

# (User-Agent, the entry or rule that makes it a bot). The first ones were counted
# as listeners by the hand-written rules.
BOTS: list[tuple[str, str]] = [
    ("AIS VirtualListener/1.0", "Adswizz"),
    ("Mozilla/5.0", "Mozilla Bot"),
    ("libwww-perl/6.67", "libwww-perl"),
    ("curl/8.1.2", "curl"),
    ("okhttp/4.11.0", "okhttp"),
    ("Go-http-client/2.0", "Go Http Client"),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Googlebot"),
    ("SomeNewCrawler/0.1", "bot|crawler|spider"),
    ("my-spider", "bot|crawler|spider"),
]


@pytest.mark.parametrize(("user_agent", "app", "device", "os"), LISTENERS)
def test_listeners_get_the_lists_app_device_and_os(
    user_agent: str, app: str, device: DeviceClass, os: str
) -> None:
    info = default_classifier().classify(user_agent)
    assert (info.app, info.device_class, info.os, info.bot) == (app, device, os, False)
    assert RequestFilter().user_agent_reason(user_agent) is None


@pytest.mark.parametrize(("user_agent", "rule"), BOTS)
def test_bots_are_bots_and_say_which_entry(user_agent: str, rule: str) -> None:
    info = default_classifier().classify(user_agent)
    assert (info.bot, info.bot_rule) == (True, rule)
    assert RequestFilter().user_agent_reason(user_agent) is FilterReason.BOT


def test_unknown_user_agent_is_unknown_and_counts() -> None:
    info = default_classifier().classify("SomethingNew/1.0")
    assert (info.app, info.device_class, info.os, info.bot) == (UNKNOWN, U, UNKNOWN, False)


def test_classification_is_cached_per_user_agent() -> None:
    classifier = UserAgentClassifier()
    ua = LISTENERS[0][0]
    assert classifier.classify(ua) is classifier.classify(ua)


def _entry(name: str, pattern: str, **more: str) -> dict[str, Any]:
    return {"name": name, "pattern": pattern, **more}


def _classifier(**lists: list[dict[str, Any]]) -> UserAgentClassifier:
    return UserAgentClassifier(lists, overlay={}, version="test")


def test_lists_are_searched_bots_apps_libraries_browsers_each_in_file_order() -> None:
    classifier = _classifier(
        bots=[_entry("Bot", "Player/1 bot-check")],
        apps=[_entry("First", "Player"), _entry("Second", "Player/1")],
        libraries=[_entry("Lib", "Player|Lib"), _entry("BotLib", "Fetch", category="bot")],
        browsers=[_entry("Browser", "Player|Lib|Fetch|Surf")],
    )
    assert classifier.classify("Player/1 bot-check").bot_rule == "Bot"
    assert classifier.classify("Player/1").app == "First"
    assert classifier.classify("Lib/2").app == "Lib"
    assert classifier.classify("Fetch/3").bot_rule == "BotLib"
    assert classifier.classify("Surf/4").app == "Browser"


def test_bot_like_words_only_make_a_bot_of_agents_no_list_names() -> None:
    classifier = _classifier(apps=[_entry("RoboPlayer", "^RoboBot/")])
    assert not classifier.classify("RoboBot/1.0").bot
    assert classifier.classify("OtherBot/1.0").bot
    assert classifier.classify("A CRAWLER").bot


def test_a_library_that_is_not_a_bot_is_the_app() -> None:
    info = default_classifier().classify("stagefright/1.2 (Linux;Android 5.0)")
    assert (info.app, info.device_class, info.bot) == ("stagefright", M, False)


def test_device_comes_from_the_first_matching_device_entry() -> None:
    classifier = _classifier(
        apps=[_entry("App", "^App/")],
        devices=[
            _entry("Speaker", "Speaker", category="smart_speaker"),
            _entry("Car", "Car|Speaker", category="auto"),
        ],
    )
    assert classifier.classify("App/1 Speaker Car").device_class is S
    assert classifier.classify("App/1 Car").device_class is DeviceClass.CAR
    assert classifier.classify("App/1").device_class is U


def test_every_device_category_of_the_lists_maps_onto_ours() -> None:
    categories = {entry["category"] for entry in load_list("devices")}
    assert categories <= set(DEVICE_CATEGORIES)
    assert set(DEVICE_CATEGORIES.values()) == set(DeviceClass) - {U}


def test_an_unknown_device_category_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown category"):
        _classifier(devices=[_entry("Fridge", "Fridge", category="kitchen")])


CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/114.0.0.0 Safari/537.36"
)


def test_a_browsers_referer_names_the_web_player() -> None:
    classifier = default_classifier()
    info = classifier.classify(CHROME, "https://music.amazon.com/podcasts/abc")
    assert (info.app, info.device_class, info.os, info.bot) == ("Amazon Music", D, "Windows", False)
    assert classifier.classify(CHROME, "https://example.com/blog").app == "Chrome"
    assert classifier.classify(CHROME).app == "Chrome"


def test_a_referer_does_not_rename_an_app() -> None:
    ua = LISTENERS[0][0]
    assert default_classifier().classify(ua, "https://music.amazon.com/").app == "Apple Podcasts"


def test_javascript_named_groups_are_translated_and_digits_are_ascii() -> None:
    pattern = js_pattern(r"^App/(?<version>\d+)", "test")
    match = pattern.search("App/42")
    assert match is not None
    assert match.group("version") == "42"
    assert pattern.search("App/\u0664\u0662") is None


@pytest.mark.parametrize("source", [r"[^]", r"a[]b", r"(?<n>a)\k<n>", r"\cJ", r"(?i)app"])
def test_javascript_only_syntax_is_refused(source: str) -> None:
    with pytest.raises(ValueError, match="JavaScript-only"):
        js_pattern(source, "test")


@pytest.mark.parametrize(
    ("source", "char"),
    [
        ("^Overcast/", "O"),
        ("^Acast.+([Aa]ndroid|iOS|Darwin)", "A"),
        ("^Pod(a|b)|^Cast", None),
        ("^Pod|Cast", None),
        ("^[Gg]oodpods/", None),
        ("^\\d", None),
        ("^a?b", None),
        ("Overcast/", None),
        ("^P[|]x", "P"),
        ("^P\\|x", "P"),
    ],
)
def test_anchored_first_char(source: str, char: str | None) -> None:
    assert anchored_first_char(source) == char
