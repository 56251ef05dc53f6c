"""User-Agent classification: app, device class, OS and bot flag, from our own rules file.

The rules live in ``user_agents.json`` next to this module: four ordered lists
of regular expressions (bots, apps, devices, operating systems), written for
Podmesh from the User-Agents common podcast apps send. Resolution:

- ``bot``: true when any bot rule matches; ``bot_rule`` names the first match.
- ``app``: the first app rule that matches, else ``"Unknown"``.
- ``os``: the app rule's OS when it fixes one, else the first OS rule, else
  ``"Unknown"``.
- ``device_class``: the app rule's device when it fixes one (a Sonos is a
  smart speaker whatever it says about Linux), else the first device rule
  (watch, car, smart speaker, tv), else the OS rule's device (iOS and Android
  are mobile; macOS, Windows, ChromeOS and Linux desktop), else ``unknown``.

Patterns are compiled once; :meth:`UserAgentClassifier.classify` is cached per
User-Agent string (LRU), since a handful of strings make up most traffic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

RULES_PATH = Path(__file__).with_name("user_agents.json")
UNKNOWN = "Unknown"
_RULE_LISTS = ("bots", "apps", "devices", "operating_systems")


class DeviceClass(StrEnum):
    """Kinds of device; the values are the analytics DIMENSION_DEVICE_CLASS values."""

    MOBILE = "mobile"
    DESKTOP = "desktop"
    SMART_SPEAKER = "smart_speaker"
    WATCH = "watch"
    TV = "tv"
    CAR = "car"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class UserAgentInfo:
    """What a User-Agent says about the listener's app and device."""

    app: str
    device_class: DeviceClass
    os: str
    bot: bool = False
    bot_rule: str = ""
    """The name of the first bot rule that matched; empty when not a bot."""


@dataclass(frozen=True, slots=True)
class _Rule:
    label: str
    pattern: re.Pattern[str]
    device_class: DeviceClass | None
    os: str | None


def _compile(kind: str, entry: Mapping[str, Any], index: int) -> _Rule:
    label_key = {"bots": "name", "apps": "app", "devices": "device_class"}.get(kind, "os")
    known = {label_key, "pattern", "ignore_case", "device_class", "os"}
    unknown = set(entry) - known
    where = f"{kind}[{index}]"
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    label = entry.get(label_key)
    if not isinstance(label, str) or not label:
        raise ValueError(f"{where}: missing {label_key!r}")
    flags = re.IGNORECASE if entry.get("ignore_case", False) else 0
    try:
        pattern = re.compile(entry["pattern"], flags)
    except (KeyError, TypeError, re.error) as error:
        raise ValueError(f"{where} ({label}): bad pattern: {error}") from None
    device_name = entry.get("device_class")
    try:
        device = None if device_name is None else DeviceClass(device_name)
    except ValueError:
        raise ValueError(f"{where} ({label}): unknown device class {device_name!r}") from None
    os_name = entry.get("os")
    if kind == "apps" and os_name is not None and device is None:
        raise ValueError(f"{where} ({label}): an app rule fixing the OS must fix the device")
    if kind == "operating_systems" and device is None:
        raise ValueError(f"{where} ({label}): an OS rule needs a device_class")
    return _Rule(label, pattern, device, os_name)


def _first(rules: Sequence[_Rule], user_agent: str) -> _Rule | None:
    for rule in rules:
        if rule.pattern.search(user_agent):
            return rule
    return None


class UserAgentClassifier:
    """Classifies User-Agents with an ordered rules document (by default ``user_agents.json``)."""

    classify: Callable[[str], UserAgentInfo]
    """Cached :meth:`classify_uncached`."""

    def __init__(self, rules: Mapping[str, Any] | None = None, cache_size: int = 65_536) -> None:
        document = rules if rules is not None else load_rules()
        compiled: dict[str, list[_Rule]] = {}
        for kind in _RULE_LISTS:
            entries = document.get(kind, [])
            if not isinstance(entries, list):
                raise ValueError(f"{kind}: expected a list of rules")
            compiled[kind] = [_compile(kind, entry, i) for i, entry in enumerate(entries)]
        self._bots = compiled["bots"]
        self._apps = compiled["apps"]
        self._devices = compiled["devices"]
        self._systems = compiled["operating_systems"]
        self.classify = lru_cache(maxsize=cache_size)(self.classify_uncached)

    def classify_uncached(self, user_agent: str) -> UserAgentInfo:
        """Runs the rules on one User-Agent."""
        bot = _first(self._bots, user_agent)
        app = _first(self._apps, user_agent)
        system = _first(self._systems, user_agent)
        os_name = (app.os if app else None) or (system.label if system else UNKNOWN)
        device = app.device_class if app else None
        if device is None:
            special = _first(self._devices, user_agent)
            device = special.device_class if special else None
        if device is None:
            device = system.device_class if system else None
        return UserAgentInfo(
            app=app.label if app else UNKNOWN,
            device_class=device or DeviceClass.UNKNOWN,
            os=os_name,
            bot=bot is not None,
            bot_rule=bot.label if bot else "",
        )


def load_rules(path: Path = RULES_PATH) -> dict[str, Any]:
    """The rules document at ``path``."""
    with path.open(encoding="utf-8") as file:
        document: dict[str, Any] = json.load(file)
    return document


@cache
def default_classifier() -> UserAgentClassifier:
    """The process-wide classifier for the built-in rules (compiled on first use)."""
    return UserAgentClassifier()
