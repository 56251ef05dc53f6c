"""Fails when pyproject.toml asks for something requirements.lock does not pin.

`make` installs only from the lock, so a requirement added or raised in pyproject.toml
without `make lock` would otherwise go unnoticed until somebody's fresh clone broke.
Also fails on direct requirements the lock still carries after pyproject.toml dropped them.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"

_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]+))?"
)
# How the lock marks what pyproject.toml asked for (not what came in through others).
_DIRECT = "podmesh (pyproject.toml)"


def declared(pyproject: dict[str, object]) -> list[Requirement]:
    """Every requirement pyproject.toml names: runtime, each extra, the build backend."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    names: list[str] = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        names.extend(extra)
    build = pyproject.get("build-system", {})
    assert isinstance(build, dict)
    names.extend(build.get("requires", []))
    return [Requirement(name) for name in names]


def pinned(lock_text: str) -> tuple[dict[str, Version], set[str]]:
    """The version pinned for this interpreter of each package, and the direct ones."""
    versions: dict[str, Version] = {}
    direct: set[str] = set()
    current: str | None = None
    for line in lock_text.splitlines():
        match = _PIN.match(line)
        if match:
            marker = match.group("marker")
            applies = marker is None or Marker(marker.strip()).evaluate()
            current = canonicalize_name(match.group("name"))
            if applies:
                versions[current] = Version(match.group("version"))
        elif current is not None and line.lstrip().startswith("#") and _DIRECT in line:
            direct.add(current)
    return versions, direct


def problems(pyproject: dict[str, object], lock_text: str) -> list[str]:
    versions, direct = pinned(lock_text)
    found: list[str] = []
    wanted: set[str] = set()
    for requirement in declared(pyproject):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        wanted.add(name)
        version = versions.get(name)
        if version is None:
            found.append(f"{requirement} is not in requirements.lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{requirement} but requirements.lock pins {name}=={version}")
    found.extend(
        f"requirements.lock pins {name} for pyproject.toml, which no longer asks for it"
        for name in sorted(direct - wanted)
    )
    return found


def main() -> int:
    with PYPROJECT.open("rb") as file:
        pyproject = tomllib.load(file)
    found = problems(pyproject, LOCK.read_text())
    if not found:
        return 0
    print("pyproject.toml and requirements.lock disagree:", file=sys.stderr)
    for problem in found:
        print(f"  - {problem}", file=sys.stderr)
    print("run `make lock` to resolve them again, and commit requirements.lock", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
