"""The one parser of resource names ("tiers/12", "tagGroups/3/tags/7") <-> numeric ids.

Every id in a name is ASCII digits without a leading zero, at most
:data:`MAX_ID_DIGITS` long (so it fits a signed 64-bit column), and the whole
name must match: ``str.isdigit()`` would accept ``"²"`` (then ``int()`` fails)
or ``"١"`` (which ``int()`` reads as 1), and a regex anchored with ``$``
matches before a trailing newline, so nothing here uses either. Services and
the gateway parse names only through this module; the same pattern is
declared on the name fields of the protos (``mall.api.v1.field``) so the
OpenAPI document says it too.
"""

from __future__ import annotations

import re

from mallkit.errors import InvalidArgument

MAX_ID_DIGITS = 18
#: The id of a resource, as a regular expression (valid in Python and ECMA-262).
ID_PATTERN = "[1-9][0-9]{0," + str(MAX_ID_DIGITS - 1) + "}"
_ID = re.compile(ID_PATTERN, re.ASCII)


def is_id(text: str) -> bool:
    """True for a canonical id: ASCII digits, no leading zero, at most 18 digits, nothing else."""
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def parse_key(text: str) -> int | None:
    """The int of a canonical id, or None."""
    return int(text) if is_id(text) else None


def parse_id(name: str, collection: str, field: str) -> int:
    """``parse_id("tiers/12", "tiers", "tier") == 12``; INVALID_ARGUMENT otherwise."""
    prefix = collection + "/"
    key = name[len(prefix):] if name.startswith(prefix) else ""
    if not is_id(key):
        raise InvalidArgument.field(field, f"must look like {collection}/{{id}}")
    return int(key)


def parse_ids(name: str, pattern: str, field: str) -> tuple[int, ...]:
    """``parse_ids("tagGroups/3/tags/7", "tagGroups/{}/tags/{}", "tag") == (3, 7)``."""
    parts, expected = name.split("/"), pattern.split("/")
    shown = pattern.replace("{}", "{id}")
    if len(parts) != len(expected):
        raise InvalidArgument.field(field, f"must look like {shown}")
    ids = []
    for got, want in zip(parts, expected, strict=True):
        if want == "{}":
            if not is_id(got):
                raise InvalidArgument.field(field, f"must look like {shown}")
            ids.append(int(got))
        elif got != want:
            raise InvalidArgument.field(field, f"must look like {shown}")
    return tuple(ids)


def optional_id(name: str, collection: str, field: str) -> int | None:
    """Like :func:`parse_id`, but "" is None."""
    return parse_id(name, collection, field) if name else None


def member_key(name: str, field: str = "name", collection: str = "members") -> str:
    """The key of ``members/{id}`` or ``members/me``: ``"me"`` or a canonical id.

    Ownership (who may say which) is :func:`mallkit.auth.member_scope`'s job.
    """
    prefix = collection + "/"
    key = name[len(prefix):] if name.startswith(prefix) else ""
    if key != "me" and not is_id(key):
        raise InvalidArgument.field(field, f"must look like {collection}/{{id}} or {collection}/me")
    return key
