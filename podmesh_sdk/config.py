"""Where the SDK finds its gateway and credential.

In order: explicit arguments, then PODMESH_GATEWAY / PODMESH_API_KEY, then a profile
of ~/.config/podmesh/profiles.toml (PODMESH_PROFILE, else `default`). The profile file
holds secrets, so it is written with mode 0600 and refused when others can read it.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
DEFAULT_PROFILE = "default"


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to do."""


def normalise_gateway(gateway: str) -> str:
    """A gateway URL with its scheme: `host:port` means plaintext http."""
    gateway = gateway.strip().rstrip("/")
    if "://" not in gateway:
        gateway = f"http://{gateway}"
    parts = urlsplit(gateway)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"gateway {gateway!r} is not an http(s) URL or host:port")
    if parts.path or parts.query:
        raise ConfigError(f"gateway {gateway!r} must be a scheme, host and port only")
    return gateway


@dataclass(frozen=True)
class Credentials:
    """A gateway URL (`http://host:port` or `https://host`) and an API key or token."""

    gateway: str
    api_key: str = ""

    @property
    def target(self) -> str:
        """The gRPC target, host:port."""
        parts = urlsplit(self.gateway)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname or ""
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def secure(self) -> bool:
        return urlsplit(self.gateway).scheme == "https"

    @classmethod
    def load(
        cls,
        *,
        gateway: str | None = None,
        api_key: str | None = None,
        profile: str | None = None,
        store: ProfileStore | None = None,
    ) -> Credentials:
        saved = (store or ProfileStore()).get(
            profile or os.environ.get("PODMESH_PROFILE") or DEFAULT_PROFILE
        )
        found_gateway = (
            gateway
            or os.environ.get("PODMESH_GATEWAY")
            or (saved.gateway if saved else DEFAULT_GATEWAY)
        )
        found_key = api_key or os.environ.get("PODMESH_API_KEY") or (saved.api_key if saved else "")
        return cls(normalise_gateway(found_gateway), found_key)


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def _quote(value: str) -> str:
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)


class ProfileStore:
    """Named profiles in a TOML file: `[profiles.NAME]` with `gateway` and `api_key`."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or _config_home() / "podmesh" / "profiles.toml"

    def _read(self) -> dict[str, Credentials]:
        if not self.path.exists():
            return {}
        mode = self.path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{self.path} holds API keys but others may read it (mode "
                f"{stat.S_IMODE(mode):o}); run: chmod 600 {self.path}"
            )
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{self.path} is not valid TOML: {error}") from None
        profiles: dict[str, Credentials] = {}
        for name, entry in dict(data.get("profiles", {})).items():
            if not isinstance(entry, dict) or not isinstance(entry.get("gateway"), str):
                raise ConfigError(f"{self.path}: profile {name!r} needs a gateway string")
            profiles[name] = Credentials(entry["gateway"], str(entry.get("api_key", "")))
        return profiles

    def get(self, name: str) -> Credentials | None:
        return self._read().get(name)

    def names(self) -> list[str]:
        return sorted(self._read())

    def save(self, name: str, credentials: Credentials) -> None:
        profiles = self._read()
        profiles[name] = credentials
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lines: list[str] = []
        for key in sorted(profiles):
            saved = profiles[key]
            lines += [
                f"[profiles.{_quote(key)}]",
                f"gateway = {_quote(saved.gateway)}",
                f"api_key = {_quote(saved.api_key)}",
                "",
            ]
        temporary = self.path.with_suffix(".tmp")
        # Created 0600 before any secret is written, then moved over the old file.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write("\n".join(lines))
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.path)
