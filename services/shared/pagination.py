"""Opaque page tokens (AIP-158): an encrypted keyset cursor bound to the caller's
tenant and to the query it came from.

A token is never an offset; it names the last row returned, so pages stay stable
while rows are inserted, and it is rejected when reused with other filters or by
another tenant. Cursors hold ids and titles, so tokens are encrypted, not just signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from services.shared.context import principal_var
from services.shared.errors import InvalidArgument

_NONCE_BYTES = 12
# The largest cursor is a 1,000-character title (at most 4,000 bytes of UTF-8), about
# 5,500 characters as a token; anything longer was not issued here, and is refused
# before any decoding.
MAX_TOKEN_CHARS = 8192
T = TypeVar("T")


def _binding() -> bytes:
    """Who a token belongs to: the caller's tenant, or the platform administrator."""
    principal = principal_var.get()
    if principal is None:
        return b"anonymous"
    if principal.tenant_id is None:
        return b"platform"
    return b"tenant:" + principal.tenant_id.bytes


class PageTokens:
    def __init__(self, key: bytes) -> None:
        # AES-GCM-SIV: random nonces stay safe however many tokens one key seals.
        self._aead = AESGCMSIV(hashlib.sha256(b"podmesh-page-token:" + key).digest())

    def encode(self, cursor: Mapping[str, Any], query: Mapping[str, Any]) -> str:
        payload = json.dumps(
            {"c": cursor, "q": _fingerprint(query)}, separators=(",", ":"), ensure_ascii=False
        )
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, payload.encode(), _binding())
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def decode(self, token: str, query: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cursor of a token, None for the first page."""
        if not token:
            return None
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidArgument.field(
                "page_token", f"is longer than {MAX_TOKEN_CHARS} characters: not a token we issued"
            )
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            raw = self._aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _binding())
            body = json.loads(raw)
        except (ValueError, InvalidTag):
            raise InvalidArgument.field(
                "page_token", "is not a token this API issued to this tenant"
            ) from None
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
