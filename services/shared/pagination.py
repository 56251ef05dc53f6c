"""Opaque page tokens (AIP-158): a signed keyset cursor bound to the query it came from.

A token is never an offset; it names the last row returned, so pages stay stable
while rows are inserted, and it is rejected when reused with other filters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from services.shared.errors import InvalidArgument

_TAG_BYTES = 16
T = TypeVar("T")


class PageTokens:
    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"podmesh-page-token:" + key).digest()

    def _tag(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_TAG_BYTES]

    def encode(self, cursor: Mapping[str, Any], query: Mapping[str, Any]) -> str:
        payload = json.dumps({"c": cursor, "q": _fingerprint(query)}, separators=(",", ":"))
        raw = payload.encode()
        return base64.urlsafe_b64encode(self._tag(raw) + raw).decode().rstrip("=")

    def decode(self, token: str, query: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cursor of a token, None for the first page."""
        if not token:
            return None
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            tag, raw = blob[:_TAG_BYTES], blob[_TAG_BYTES:]
            if not hmac.compare_digest(tag, self._tag(raw)):
                raise ValueError("bad tag")
            body = json.loads(raw)
        except ValueError:
            raise InvalidArgument.field("page_token", "is not a token this API issued") from None
        if body.get("q") != _fingerprint(query):
            raise InvalidArgument.field("page_token", "belongs to a request with other parameters")
        cursor: dict[str, Any] = body["c"]
        return cursor


def _fingerprint(query: Mapping[str, Any]) -> str:
    encoded = json.dumps(query, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()[:16]


class Keyset:
    """Pages ordered by (timestamp, id): the usual shape of our list methods."""

    def __init__(self, tokens: PageTokens, query: Mapping[str, Any]) -> None:
        self._tokens = tokens
        self._query = query

    def after(self, token: str) -> tuple[datetime, uuid.UUID] | None:
        cursor = self._tokens.decode(token, self._query)
        if cursor is None:
            return None
        return datetime.fromisoformat(cursor["t"]), uuid.UUID(cursor["id"])

    def next_token(self, last: tuple[datetime, uuid.UUID] | None) -> str:
        if last is None:
            return ""
        return self._tokens.encode({"t": last[0].isoformat(), "id": str(last[1])}, self._query)


def split_page(rows: Sequence[T], page_size: int) -> tuple[Sequence[T], bool]:
    """Rows fetched with LIMIT page_size + 1: the page, and whether more follow."""
    return rows[:page_size], len(rows) > page_size
