"""Opaque keyset page tokens (AIP-158).

A token holds the sort key of the last item returned and a fingerprint of the
request's filters, as base64url JSON signed with HMAC-SHA256: a client can
neither forge a position nor reuse a token with other filters. A token never
grants access: every page is authorized like the first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence

from mallkit.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def page_size(value: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """0 means the default, larger values are capped, negative ones refused."""
    if value < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    if value == 0:
        return default
    return min(value, maximum)


class PageTokens:
    """Signs and checks page tokens with a key derived from the token secret."""

    def __init__(self, secret: str):
        self._key = hashlib.sha256(b"page-token:" + secret.encode()).digest()

    def _sig(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:12]

    def encode(self, last_key: Sequence[object], filters: Sequence[object] = ()) -> str:
        body = json.dumps({"k": list(last_key), "f": _fingerprint(filters)}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(self._sig(body) + body).rstrip(b"=").decode()

    def decode(self, token: str, filters: Sequence[object] = ()) -> list | None:
        """The last key of the previous page, or None for the first page."""
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            sig, body = raw[:12], raw[12:]
            if not hmac.compare_digest(sig, self._sig(body)):
                raise ValueError("bad signature")
            data = json.loads(body)
        except (ValueError, TypeError):
            raise InvalidArgument.field("page_token", "is not a token returned by this list")
        if data.get("f") != _fingerprint(filters):
            raise InvalidArgument.field("page_token", "was issued for a request with other filters")
        return list(data["k"])


def _fingerprint(filters: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps([str(f) for f in filters]).encode()).hexdigest()[:16]


def next_token(tokens: PageTokens, rows: list, size: int, key, filters: Sequence[object] = ()) -> tuple[list, str]:
    """Trim a ``size + 1`` fetch to ``size`` rows and make the next token."""
    if len(rows) <= size:
        return rows, ""
    rows = rows[:size]
    return rows, tokens.encode(key(rows[-1]), filters)
