"""User-Agent classification by the OPAWG user-agents-v2 lists, the way OP3 reads them.

The lists ship as data in ``opawg/`` next to this module, with their MIT licence
and the upstream commit (``make update-user-agents`` fetches a newer one). For
one User-Agent:

1. the first entry that matches, looking through ``bots``, ``apps``,
   ``libraries`` and ``browsers`` in that order, each file in its own order;
2. a bot when that entry is a bot, or a library whose category is ``bot``, or,
   when nothing matched, when one of our overlay's bot rules matches or the
   agent says bot, crawler or spider (any case);
3. otherwise the app is the entry's name (``Unknown`` when nothing matched),
   the device the first ``devices`` entry that matches, its category mapped
   onto :class:`DeviceClass`, and the OS the one our overlay gives that device;
4. a browser with a Referer: the first ``referrers`` entry matching the
   Referer names the web player (:meth:`UserAgentClassifier.classify`).

Our own rules are few and live in ``user_agent_overlay.json``, each with its
reason; they are applied on top of the lists and are part of :attr:`version`.

The lists are JavaScript regular expressions. Those in the shipped lists mean
the same in Python's ``re`` with ``re.ASCII`` (JavaScript's ``\\d``, ``\\w``
and ``\\b`` are ASCII-only); :func:`js_pattern` rejects the few constructs that
would not. Classification is cached per distinct User-Agent (bounded LRU), and
patterns anchored on a literal first character (``^Overcast/``, two thirds of
them) are tried only on agents starting with it. One big alternation would not
help: Python's ``re`` tries its branches one by one at every position, slower
than searching the patterns one by one, each with its own literal fast path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

LISTS_DIR = Path(__file__).with_name("opawg")
OVERLAY_PATH = Path(__file__).with_name("user_agent_overlay.json")
UNKNOWN = "Unknown"
UPSTREAM = "opawg/user-agents-v2"
AGENT_FILES = ("bots", "apps", "libraries", "browsers")
# OP3's last resort for agents no list knows.
_BOTLIKE = re.compile(r"bot|crawler|spider", re.IGNORECASE)
# JavaScript syntax that Python's re reads differently or not at all; named groups,
# "(?<name>", are translated instead.
_JS_ONLY = re.compile(r"\\[ck]|\[\^?\]|\\u\{|\(\?[a-z]")
_JS_NAMED_GROUP = re.compile(r"\(\?<(?![=!])")


class DeviceClass(StrEnum):
    """Kinds of device; the values are the analytics DIMENSION_DEVICE_CLASS values."""

    MOBILE = "mobile"
    DESKTOP = "desktop"
    SMART_SPEAKER = "smart_speaker"
    WATCH = "watch"
    TV = "tv"
    CAR = "car"
    UNKNOWN = "unknown"


# The devices file's categories, onto ours.
DEVICE_CATEGORIES: Mapping[str, DeviceClass] = {
    "mobile": DeviceClass.MOBILE,
    "computer": DeviceClass.DESKTOP,
    "smart_speaker": DeviceClass.SMART_SPEAKER,
    "watch": DeviceClass.WATCH,
    "smart_tv": DeviceClass.TV,
    "auto": DeviceClass.CAR,
}


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    """What a User-Agent says about the listener's app and device."""

    app: str
    device_class: DeviceClass
    os: str
    bot: bool = False
    bot_rule: str = ""
    """The name of the entry (or rule) that made it a bot; empty when not a bot."""
    browser: bool = False
    """Matched the browsers list: the Referer may name a web player."""


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    pattern: re.Pattern[str]
    category: str
    bot: bool


def js_pattern(source: str, where: str) -> re.Pattern[str]:
    """A list's JavaScript regular expression as a Python pattern with the same meaning."""
    if _JS_ONLY.search(source):
        raise ValueError(f"{where}: JavaScript-only syntax in {source!r}")
    try:
        return re.compile(_JS_NAMED_GROUP.sub("(?P<", source), re.ASCII)
    except re.error as error:
        raise ValueError(f"{where}: bad pattern {source!r}: {error}") from None


def load_list(name: str, directory: Path = LISTS_DIR) -> list[dict[str, Any]]:
    """The entries of one list file (``bots``, ``apps``, ...)."""
    with (directory / f"{name}.json").open(encoding="utf-8") as file:
        entries: list[dict[str, Any]] = json.load(file)["entries"]
    return entries


def load_overlay(path: Path = OVERLAY_PATH) -> dict[str, Any]:
    """Our own rules document."""
    with path.open(encoding="utf-8") as file:
        document: dict[str, Any] = json.load(file)
    return document


def lists_commit(directory: Path = LISTS_DIR) -> str:
    """The upstream commit the shipped lists come from."""
    return (directory / "COMMIT").read_text(encoding="ascii").strip()


def anchored_first_char(source: str) -> str | None:
    """The character every match must start the text with, for ``^X...`` patterns.

    None when the pattern is not anchored at the start, its first character is
    not a literal, is optional, or a top-level alternative escapes the anchor.
    """
    if len(source) < 2 or source[0] != "^" or not (source[1].isalnum() or source[1] in " -_/"):
        return None
    if len(source) > 2 and source[2] in "?*{":
        return None
    depth = 0
    in_class = False
    escaped = False
    for char in source:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char in "()":
            depth += 1 if char == "(" else -1
        elif char == "|" and depth == 0:
            return None
    return source[1]


class _List:
    """One list's entries in order, indexed by the first character of anchored patterns.

    Two thirds of the patterns are ``^Name...``: only those whose character
    starts the text are tried, with every unanchored one, in file order.
    """

    __slots__ = ("_anchored", "_by_char", "_unanchored", "entries")

    def __init__(self, entries: Sequence[_Entry]) -> None:
        self.entries = tuple(entries)
        self._anchored: dict[str, list[int]] = {}
        unanchored: list[int] = []
        for index, entry in enumerate(self.entries):
            char = anchored_first_char(entry.pattern.pattern)
            if char is None:
                unanchored.append(index)
            else:
                self._anchored.setdefault(char, []).append(index)
        self._unanchored = tuple(unanchored)
        self._by_char: dict[str, tuple[_Entry, ...]] = {}

    def candidates(self, text: str) -> tuple[_Entry, ...]:
        """The entries that may match ``text``, in file order."""
        char = text[:1]
        found = self._by_char.get(char)
        if found is None:
            anchored = self._anchored.get(char)
            indices = sorted((*self._unanchored, *(anchored or ())))
            found = tuple(self.entries[i] for i in indices)
            self._by_char[char] = found
        return found

    def first(self, text: str) -> _Entry | None:
        for entry in self.candidates(text):
            if entry.pattern.search(text):
                return entry
        return None


def _entries(kind: str, raw: Sequence[Mapping[str, Any]]) -> list[_Entry]:
    compiled = []
    for index, entry in enumerate(raw):
        name = entry.get("name")
        source = entry.get("pattern")
        where = f"{kind}[{index}]"
        if not isinstance(name, str) or not name or not isinstance(source, str):
            raise ValueError(f"{where}: an entry needs a name and a pattern")
        category = entry.get("category", "")
        bot = kind == "bots" or (kind == "libraries" and category == "bot")
        compiled.append(_Entry(name, js_pattern(source, f"{where} ({name})"), category, bot))
    return compiled


class UserAgentClassifier:
    """Classifies User-Agents (and Referers of browsers) by the lists and our overlay."""

    def __init__(
        self,
        lists: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        overlay: Mapping[str, Any] | None = None,
        version: str | None = None,
        cache_size: int = 65_536,
    ) -> None:
        if lists is None:
            lists = {name: load_list(name) for name in (*AGENT_FILES, "devices", "referrers")}
        document = overlay if overlay is not None else load_overlay()
        self._agents = tuple(_List(_entries(k, lists.get(k, []))) for k in AGENT_FILES)
        self._devices = _List(_entries("devices", lists.get("devices", [])))
        self._referrers = _List(_entries("referrers", lists.get("referrers", [])))
        self._overlay_bots = tuple(
            _Entry(rule["name"], re.compile(rule["pattern"]), "bot", True)
            for rule in document.get("bots", [])
        )
        for device in self._devices.entries:
            if device.category not in DEVICE_CATEGORIES:
                raise ValueError(f"devices: unknown category {device.category!r} ({device.name})")
        names = {device.name for device in self._devices.entries}
        self._os_by_device: dict[str, str] = {}
        for rule in document.get("operating_systems", []):
            if rule["device"] not in names:
                raise ValueError(f"overlay: no device {rule['device']!r} in the devices list")
            self._os_by_device[rule["device"]] = rule["os"]
        self.version = version or (
            f"{UPSTREAM}@{lists_commit()}+podmesh-overlay.{document.get('version', 0)}"
        )
        """The lists' upstream commit and our overlay's version, recorded with every download."""
        self._by_agent = lru_cache(maxsize=cache_size)(self.classify_uncached)
        self._by_referer = lru_cache(maxsize=cache_size)(self._web_player)

    def classify(self, user_agent: str, referer: str = "") -> UserAgentInfo:
        """Cached classification; a browser's Referer may name the web player."""
        info = self._by_agent(user_agent)
        if referer and info.browser:
            player = self._by_referer(referer)
            if player is not None:
                return replace(info, app=player)
        return info

    def classify_uncached(self, user_agent: str) -> UserAgentInfo:
        """Runs the lists on one User-Agent."""
        found: _Entry | None = None
        browser = False
        for kind, entries in zip(AGENT_FILES, self._agents, strict=True):
            found = entries.first(user_agent)
            if found is not None:
                browser = kind == "browsers"
                break
        if found is not None and found.bot:
            return UserAgentInfo(UNKNOWN, DeviceClass.UNKNOWN, UNKNOWN, True, found.name)
        if found is None:
            for rule in self._overlay_bots:
                if rule.pattern.search(user_agent):
                    return UserAgentInfo(UNKNOWN, DeviceClass.UNKNOWN, UNKNOWN, True, rule.name)
            if _BOTLIKE.search(user_agent):
                return UserAgentInfo(UNKNOWN, DeviceClass.UNKNOWN, UNKNOWN, True, _BOTLIKE.pattern)
        device = self._devices.first(user_agent)
        return UserAgentInfo(
            app=found.name if found else UNKNOWN,
            device_class=DEVICE_CATEGORIES[device.category] if device else DeviceClass.UNKNOWN,
            os=self._os_by_device.get(device.name, UNKNOWN) if device else UNKNOWN,
            browser=browser,
        )

    def _web_player(self, referer: str) -> str | None:
        entry = self._referrers.first(referer)
        return entry.name if entry else None


@cache
def default_classifier() -> UserAgentClassifier:
    """The process-wide classifier for the shipped lists (compiled on first use)."""
    return UserAgentClassifier()
