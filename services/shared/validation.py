"""Collects every field violation of a request before rejecting it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from services.shared.errors import FieldViolation, InvalidArgument

# Deliberately loose: one "@", something on each side, a dot in the domain.
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Violations:
    def __init__(self) -> None:
        self._items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._items.append(FieldViolation(field, description))

    def check(self, ok: bool, field: str, description: str) -> bool:
        if not ok:
            self.add(field, description)
        return ok

    def raise_if_any(self) -> None:
        if self._items:
            raise InvalidArgument(self._items)


def is_email(value: str) -> bool:
    return bool(_EMAIL_RE.fullmatch(value))


def parse_uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument.field(field, "must be a UUID") from None


def mask_paths(
    requested: Iterable[str], allowed: Iterable[str], field: str = "update_mask"
) -> set[str]:
    """The requested paths, rejecting an empty mask and any path not in `allowed`."""
    paths = set(requested)
    if not paths:
        raise InvalidArgument.field(field, "must name at least one field to update")
    unknown = sorted(paths - set(allowed))
    if unknown:
        raise InvalidArgument.field(field, f"cannot update {', '.join(unknown)}")
    return paths


def page_size(requested: int, *, default: int = 50, maximum: int = 200) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(requested or default, maximum)
