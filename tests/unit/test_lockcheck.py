"""The lock check names every way pyproject.toml and requirements.lock can disagree."""

from __future__ import annotations

import tomllib

from devstack.lockcheck import LOCK, PYPROJECT, problems

LOCK_TEXT = """\
httpx==0.29.0 \\
    --hash=sha256:00
    # via podmesh (pyproject.toml)
numpy==2.4.6 ; python_full_version < '3.12' \\
    --hash=sha256:01
    # via
    #   podmesh (pyproject.toml)
    #   datasketches
numpy==2.5.5 ; python_full_version >= '3.12' \\
    --hash=sha256:02
    # via podmesh (pyproject.toml)
setuptools==84.2.1 \\
    --hash=sha256:03
    # via grpcio-tools
"""


def project(*dependencies: str) -> dict[str, object]:
    return {
        "project": {"dependencies": list(dependencies)},
        "build-system": {"requires": ["setuptools>=68"]},
    }


def test_the_repository_lock_agrees_with_pyproject() -> None:
    with PYPROJECT.open("rb") as file:
        assert problems(tomllib.load(file), LOCK.read_text()) == []


def test_a_lock_that_satisfies_every_requirement_passes() -> None:
    assert problems(project("httpx>=0.27", "numpy>=2"), LOCK_TEXT) == []


def test_a_requirement_missing_from_the_lock_is_named() -> None:
    found = problems(project("httpx>=0.27", "numpy>=2", "stripe>=11"), LOCK_TEXT)
    assert found == ["stripe>=11 is not in requirements.lock"]


def test_a_raised_lower_bound_is_named_with_the_pinned_version() -> None:
    found = problems(project("httpx>=0.30", "numpy>=2"), LOCK_TEXT)
    assert found == ["httpx>=0.30 but requirements.lock pins httpx==0.29.0"]


def test_the_pin_for_this_interpreter_is_the_one_checked() -> None:
    # On 3.11 numpy is 2.4.6; the 3.12+ pin must not satisfy a bound meant for 3.11.
    found = problems(project("httpx", "numpy>=2.5"), LOCK_TEXT)
    assert found == ["numpy>=2.5 but requirements.lock pins numpy==2.4.6"]


def test_a_direct_requirement_pyproject_dropped_is_named() -> None:
    found = problems(project("numpy>=2"), LOCK_TEXT)
    assert found == ["requirements.lock pins httpx for pyproject.toml, which no longer asks for it"]


def test_the_build_backend_is_checked_too() -> None:
    found = problems(
        {
            "project": {"dependencies": ["httpx", "numpy"]},
            "build-system": {"requires": ["setuptools>=90"]},
        },
        LOCK_TEXT,
    )
    assert found == ["setuptools>=90 but requirements.lock pins setuptools==84.2.1"]
