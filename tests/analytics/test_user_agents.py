"""The User-Agent classifier and our rules file, with real-world strings for every app."""

from __future__ import annotations

from typing import Any

import pytest

from services.analytics.counting import DeviceClass, UserAgentClassifier, default_classifier
from services.analytics.counting.user_agents import UNKNOWN, load_rules

M, D, S, W, T, C, U = (
    DeviceClass.MOBILE,
    DeviceClass.DESKTOP,
    DeviceClass.SMART_SPEAKER,
    DeviceClass.WATCH,
    DeviceClass.TV,
    DeviceClass.CAR,
    DeviceClass.UNKNOWN,
)

# (User-Agent, app, device class, OS), as podcast hosts see them.
APPS: list[tuple[str, str, DeviceClass, str]] = [
    ("Podcasts/1650.20 CFNetwork/1408.0.4 Darwin/22.5.0", "Apple Podcasts", M, "iOS"),
    ("Podcasts/4023.400.39 CFNetwork/1494.0.7 Darwin/23.4.0", "Apple Podcasts", M, "iOS"),
    ("Podcasts/1.1.0.1 CFNetwork/1410.0.3 Darwin/22.6.0 (x86_64)", "Apple Podcasts", D, "macOS"),
    ("Balados/1555.2.1 CFNetwork/1333.0.4 Darwin/21.5.0", "Apple Podcasts", M, "iOS"),
    (
        "iTunes/12.12.9 (Macintosh; OS X 13.4) AppleWebKit/615.2.9.11.7",
        "Apple Podcasts",
        D,
        "macOS",
    ),
    (
        "iTunes/12.10.11 (Windows; Microsoft Windows 10 x64 Professional Edition (Build 19041); "
        "x64) AppleWebKit/7610.2011.1003.4",
        "Apple Podcasts",
        D,
        "Windows",
    ),
    (
        "atc/1.0 watchOS/7.3.3 model/Watch5,9 hwp/t8006 build/18S830 (6; dt:204)",
        "Apple Podcasts",
        W,
        "watchOS",
    ),
    (
        "AppleCoreMedia/1.0.0.19B74 (HomePod; U; CPU OS 15_1 like Mac OS X; en_us)",
        "Apple HomePod",
        S,
        "audioOS",
    ),
    (
        "AppleCoreMedia/1.0.0.20F66 (iPhone; U; CPU OS 16_5 like Mac OS X; en_us)",
        "AppleCoreMedia",
        M,
        "iOS",
    ),
    (
        "AppleCoreMedia/1.0.0.20K71 (Apple TV; U; CPU OS 16_1 like Mac OS X; en_us)",
        "AppleCoreMedia",
        T,
        "tvOS",
    ),
    ("Spotify/8.8.12 iOS/16.5 (iPhone14,2)", "Spotify", M, "iOS"),
    ("Spotify/8.8.20.544 Android/33 (SM-G991B)", "Spotify", M, "Android"),
    ("Spotify/1.2.13.661 Win32_x86_64/0 (PC desktop)", "Spotify", D, "Windows"),
    ("Spotify/1.1.89.862 OSX_ARM64/OS X 13.4.1 [arm 2]", "Spotify", D, "macOS"),
    ("Overcast/3.0 (+http://overcast.fm/; iOS podcast app)", "Overcast", M, "iOS"),
    ("PocketCasts/7.43 (iPhone; iOS 16.5)", "Pocket Casts", M, "iOS"),
    ("Pocket Casts/7.45 (Android 13; Pixel 7)", "Pocket Casts", M, "Android"),
    ("Castro 2022.12/1196 Like iTunes", "Castro", M, "iOS"),
    (
        "PodcastAddict/v5 (+https://podcastaddict.com/; Android podcast app)",
        "Podcast Addict",
        M,
        "Android",
    ),
    (
        "Podcast Addict - Dalvik/2.1.0 (Linux; U; Android 12; SM-A525F Build/SP1A.210812.016)",
        "Podcast Addict",
        M,
        "Android",
    ),
    ("CastBox/8.38.0-210921071 (Linux;Android 11) ExoPlayerLib/2.10.4", "Castbox", M, "Android"),
    (
        "Castbox/4.9.2 (fm.castbox.audiobook.radio.podcast; build:123; iOS 15.0.0) Alamofire/5.4.4",
        "Castbox",
        M,
        "iOS",
    ),
    ("GooglePodcasts/2.0.2 (iPhone; iOS 14.4)", "Google Podcasts", M, "iOS"),
    (
        "Mozilla/5.0 (Linux; Android 12; Pixel 6) AppleWebKit/537.36 (KHTML, like Gecko) "
        "com.google.android.apps.podcasts",
        "Google Podcasts",
        M,
        "Android",
    ),
    (
        "AmazonMusic/17.12.1 Mozilla/5.0 (Linux; Android 11; SM-G973F Build/RP1A.200720.012)",
        "Amazon Music",
        M,
        "Android",
    ),
    ("Amazon Music/22.6.2 (iPhone; iOS 16.5)", "Amazon Music", M, "iOS"),
    ("AlexaMediaPlayer/2.1.4676.0 (Linux;Android 5.1.1) ExoPlayerLib/1.5.9", "Alexa", S, "Fire OS"),
    ("Echo/1.0(APNG)", "Alexa", S, "Fire OS"),
    ("iHeartRadio/10.19.0 (iPhone; iOS 16.5; iPhone14,5)", "iHeartRadio", M, "iOS"),
    (
        "iHeartRadio/10.20.0 (Android 13; SM-S901U Build/TP1A.220624.014)",
        "iHeartRadio",
        M,
        "Android",
    ),
    ("Stitcher/iOS 10.2.1", "Stitcher", M, "iOS"),
    ("Podbean/Android App 8.6.3 (http://podbean.com), 5c2e3f", "Podbean", M, "Android"),
    ("Podbean/iOS (http://podbean.com) 7.7.8 - 2c3c11", "Podbean", M, "iOS"),
    ("PodcastGuru/3.9.7 (Android 13; SM-S901B)", "Podcast Guru", M, "Android"),
    ("AntennaPod/3.0.1", "AntennaPod", M, "Android"),
    ("Podverse/Android Mobile App/4.12.0", "Podverse", M, "Android"),
    ("Podverse/iOS Mobile App/4.11.2", "Podverse", M, "iOS"),
    ("Fountain/1.0.9 (Android 13; Pixel 7)", "Fountain", M, "Android"),
    (
        "com.google.android.apps.youtube.music/6.10.52 (Linux; U; Android 13; en_US; Pixel 7 "
        "Build/TQ3A.230605.012) gzip",
        "YouTube Music",
        M,
        "Android",
    ),
    (
        "com.google.ios.youtubemusic/6.10 (iPhone14,2; U; CPU iOS 16_5 like Mac OS X; en_US)",
        "YouTube Music",
        M,
        "iOS",
    ),
    (
        "com.google.android.youtube/18.23.35 (Linux; U; Android 13; en_US; SM-S908B) gzip",
        "YouTube",
        M,
        "Android",
    ),
    ("Deezer/7.0.6.5 (Android; 13; Mobile; fr) samsung SM-G991B", "Deezer", M, "Android"),
    ("Deezer/9.20.0 CFNetwork/1408.0.4 Darwin/22.5.0", "Deezer", M, "iOS"),
    ("Audible/3.81 CFNetwork/1408.0.4 Darwin/22.5.0", "Audible", M, "iOS"),
    ("Player FM - Podcast App/4.2.2 (Android 13; SM-A536B)", "Player FM", M, "Android"),
    ("Linux UPnP/1.0 Sonos/70.3-35220 (ZPS1)", "Sonos", S, "Sonos"),
    (
        "Mozilla/5.0 (Linux; Android) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/114.0.5735.90 Safari/537.36 CrKey/1.68.3711",
        "Google Home",
        S,
        "Cast OS",
    ),
    ("TuneIn Radio/29.2.1; iPhone14,2; iOS/16.5", "TuneIn", M, "iOS"),
    ("Pandora/2306.1 Android/13 (SM-G991U)", "Pandora", M, "Android"),
    ("SiriusXM/5.32.0 (iPhone; iOS 16.5)", "SiriusXM", M, "iOS"),
    ("Podcast Republic/23.6.13 (Android 13)", "Podcast Republic", M, "Android"),
    ("Downcast/2.9.63 (iPhone; iOS 16.5; Scale/3.00)", "Downcast", M, "iOS"),
    ("Goodpods/2.8.0 (iPhone; iOS 16.5)", "Goodpods", M, "iOS"),
    ("Snipd/2.4.1 (Android 13)", "Snipd", M, "Android"),
    ("Podimo/2.41.0 (iPhone; iOS 16.5)", "Podimo", M, "iOS"),
    ("Himalaya/3.2.1 (Android 12; SM-A525F)", "Himalaya", M, "Android"),
    ("Breaker/1.9.2 (iPhone; iOS 14.4)", "Breaker", M, "iOS"),
    ("BeyondPod", "BeyondPod", M, "Android"),
    ("DoggCatcher", "DoggCatcher", M, "Android"),
    ("Podkicker/3.6.3", "Podkicker", M, "Android"),
    ("gPodder/3.11.1 (+http://gpodder.org/) Linux", "gPodder", D, "Linux"),
    ("RadioPublic/android-2.3", "RadioPublic", M, "Android"),
    ("NPR One/3.11.0 (iPhone; iOS 16.5)", "NPR One", M, "iOS"),
    ("Acast/5.2.0 (iPhone; iOS 16.5)", "Acast", M, "iOS"),
    ("Spreaker/4.30.0 (Android 13)", "Spreaker", M, "Android"),
    ("Castamatic/9.1 CFNetwork/1408.0.4 Darwin/22.5.0", "Castamatic", M, "iOS"),
    ("Anytime/1.3.3 (Android 13)", "Anytime Podcast Player", M, "Android"),
    ("VLC/3.0.18 LibVLC/3.0.18", "VLC", U, UNKNOWN),
    ("Windows-Media-Player/12.0.19041.3031", "Windows Media Player", D, "Windows"),
    ("Kodi/20.2 (X11; Linux x86_64) Ubuntu/22.04 App_Bitness/64 Version/20.2", "Kodi", D, "Linux"),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/114.0.0.0 Safari/537.36 Edg/114.0.1823.58",
        "Microsoft Edge",
        D,
        "Windows",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/114.0.0.0 Safari/537.36 OPR/100.0.0.0",
        "Opera",
        D,
        "Windows",
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-S908B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/21.0 Chrome/110.0.5481.154 Mobile Safari/537.36",
        "Samsung Internet",
        M,
        "Android",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/114.0.0.0 Safari/537.36",
        "Chrome",
        D,
        "Windows",
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/114.0.0.0 Mobile Safari/537.36",
        "Chrome",
        M,
        "Android",
    ),
    (
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/114.0.0.0 Safari/537.36",
        "Chrome",
        D,
        "ChromeOS",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/16.5 Safari/605.1.15",
        "Safari",
        D,
        "macOS",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 16_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/16.5 Mobile/15E148 Safari/604.1",
        "Safari",
        M,
        "iOS",
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0",
        "Firefox",
        D,
        "Linux",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 16_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) FxiOS/115.0 Mobile/15E148 Safari/605.1.15",
        "Firefox",
        M,
        "iOS",
    ),
]

# Players that say nothing about the app, and where only the device is known.
GENERIC: list[tuple[str, str, DeviceClass, str]] = [
    ("Dalvik/2.1.0 (Linux; U; Android 11; SM-G975F Build/RP1A.200720.012)", UNKNOWN, M, "Android"),
    ("stagefright/1.2 (Linux;Android 5.0)", UNKNOWN, M, "Android"),
    ("Lavf/58.76.100", UNKNOWN, U, UNKNOWN),
    (
        "Mozilla/5.0 (Linux; Android 9; BRAVIA 4K GB ATV3 Build/PTT1.190515.001.S52) "
        "ExoPlayerLib/2.11.8",
        UNKNOWN,
        T,
        "Android",
    ),
    (
        "Mozilla/5.0 (Linux; Android 12; Android Automotive) ExoPlayerLib/2.18.1",
        UNKNOWN,
        C,
        "Android",
    ),
    ("ExoPlayerLib/2.18.1 (Linux; Android 12; Pixel Watch; Wear OS)", UNKNOWN, W, "Android"),
]

# (User-Agent, the bot rule that must catch it).
BOTS: list[tuple[str, str]] = [
    ("curl/8.1.2", "http-library"),
    ("Wget/1.21.4", "http-library"),
    ("python-requests/2.31.0", "http-library"),
    ("Python-urllib/3.11", "http-library"),
    ("aiohttp/3.8.5", "http-library"),
    ("Go-http-client/2.0", "http-library"),
    ("okhttp/4.11.0", "http-library"),
    ("Java/1.8.0_372", "http-library"),
    ("Apache-HttpClient/4.5.14 (Java/17.0.7)", "http-library"),
    ("axios/1.4.0", "http-library"),
    ("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", "http-library"),
    ("libwww-perl/6.67", "http-library"),
    ("Dart/3.0 (dart:io)", "http-library"),
    ("PostmanRuntime/7.32.3", "http-library"),
    (
        "Mozilla/5.0 (Windows NT; Windows NT 10.0; en-US) WindowsPowerShell/5.1.19041.3031",
        "scripting",
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessChrome/114.0.5735.90 Safari/537.36",
        "headless-browser",
    ),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "crawler"),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "crawler"),
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", "crawler"),
    ("Mozilla/5.0 (compatible; Applebot/0.1; +http://www.apple.com/go/applebot)", "crawler"),
    ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", "crawler"),
    ("Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)", "crawler"),
    ("Mozilla/5.0 (compatible; proximic; +https://www.comscore.com/Web-Crawler)", "crawler"),
    ("Baiduspider+(+http://www.baidu.com/search/spider.htm)", "crawler"),
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", "link-preview"),
    ("WhatsApp/2.23.11.76 A", "link-preview"),
    ("Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)", "monitoring"),
    ("Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", "monitoring"),
    ("kube-probe/1.27", "monitoring"),
    ("Datadog Agent/7.45.0", "monitoring"),
    (
        "Overcast/1.0 Podcast Sync (123 subscribers; feed-id=456; +http://overcast.fm/)",
        "feed-crawler",
    ),
    ("iTMS", "feed-crawler"),
    ("PodcastIndex.org/1.0", "feed-crawler"),
    ("Feedly/1.0 (+http://www.feedly.com/fetcher.html; 16 subscribers)", "feed-crawler"),
]

# Real listeners that naive bot rules catch by mistake.
NOT_BOTS = [
    "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/114.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 11; Cubot P40) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/114.0.0.0 Mobile Safari/537.36",
    "Overcast/3.0 (+http://overcast.fm/; iOS podcast app)",
    "PodcastAddict/v5 (+https://podcastaddict.com/; Android podcast app)",
    "okhttp/4.9.0 Podbean/Android App 8.6.3",
]


@pytest.mark.parametrize(("user_agent", "app", "device", "os"), APPS + GENERIC)
def test_classifies_app_device_and_os(
    user_agent: str, app: str, device: DeviceClass, os: str
) -> None:
    info = default_classifier().classify(user_agent)
    assert (info.app, info.device_class, info.os) == (app, device, os)
    assert not info.bot


def test_every_app_rule_has_a_real_world_example() -> None:
    apps = {entry["app"] for entry in load_rules()["apps"]}
    assert apps == {app for _, app, _, _ in APPS}


@pytest.mark.parametrize(("user_agent", "rule"), BOTS)
def test_bots_crawlers_monitoring_and_http_libraries_are_bots(user_agent: str, rule: str) -> None:
    info = default_classifier().classify(user_agent)
    assert info.bot
    assert info.bot_rule == rule


def test_every_bot_rule_has_a_real_world_example() -> None:
    assert {entry["name"] for entry in load_rules()["bots"]} == {rule for _, rule in BOTS}


@pytest.mark.parametrize("user_agent", NOT_BOTS)
def test_listeners_that_look_like_bots_are_not(user_agent: str) -> None:
    assert not default_classifier().classify(user_agent).bot


def test_unknown_user_agent_is_unknown() -> None:
    info = default_classifier().classify("SomethingNew/1.0")
    assert (info.app, info.device_class, info.os, info.bot) == (UNKNOWN, U, UNKNOWN, False)


def test_classification_is_cached_per_user_agent() -> None:
    classifier = UserAgentClassifier()
    ua = APPS[0][0]
    assert classifier.classify(ua) is classifier.classify(ua)


def _rules(**lists: list[dict[str, Any]]) -> dict[str, Any]:
    return {"bots": [], "apps": [], "devices": [], "operating_systems": [], **lists}


def test_first_matching_app_rule_wins() -> None:
    classifier = UserAgentClassifier(
        _rules(apps=[{"app": "First", "pattern": "Player"}, {"app": "Second", "pattern": "Player"}])
    )
    assert classifier.classify("Player/1").app == "First"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (_rules(apps=[{"app": "X", "pattern": "("}]), "bad pattern"),
        (_rules(apps=[{"app": "X", "pattern": "x", "colour": "red"}]), "unknown keys"),
        (_rules(apps=[{"pattern": "x"}]), "missing 'app'"),
        (_rules(apps=[{"app": "X", "pattern": "x", "device_class": "fridge"}]), "device class"),
        (_rules(apps=[{"app": "X", "pattern": "x", "os": "iOS"}]), "must fix the device"),
        (_rules(operating_systems=[{"os": "X", "pattern": "x"}]), "needs a device_class"),
        ({"apps": {"app": "X"}}, "expected a list"),
    ],
)
def test_rules_file_mistakes_are_reported(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UserAgentClassifier(rules)
