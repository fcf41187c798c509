"""Random codes members and channels carry (invite codes, channel scenes): no 0/O, 1/I."""

from __future__ import annotations

import secrets

_INVITE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def new_code(length: int = 8) -> str:
    return "".join(secrets.choice(_INVITE_ALPHABET) for _ in range(length))
