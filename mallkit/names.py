"""Resource names ("tiers/12", "tagGroups/3/tags/7") <-> numeric ids."""

from __future__ import annotations

import re

from mallkit.errors import InvalidArgument

_ID = re.compile(r"^[1-9][0-9]{0,17}$")


def parse_id(name: str, collection: str, field: str) -> int:
    """``parse_id("tiers/12", "tiers", "tier") == 12``; INVALID_ARGUMENT otherwise."""
    prefix = collection + "/"
    if not name.startswith(prefix) or not _ID.match(name[len(prefix):]):
        raise InvalidArgument.field(field, f"must look like {collection}/{{id}}")
    return int(name[len(prefix):])


def parse_ids(name: str, pattern: str, field: str) -> tuple[int, ...]:
    """``parse_ids("tagGroups/3/tags/7", "tagGroups/{}/tags/{}", "tag") == (3, 7)``."""
    parts, expected = name.split("/"), pattern.split("/")
    if len(parts) != len(expected):
        raise InvalidArgument.field(field, f"must look like {pattern.replace('{}', '{id}')}")
    ids = []
    for got, want in zip(parts, expected, strict=True):
        if want == "{}":
            if not _ID.match(got):
                raise InvalidArgument.field(field, f"must look like {pattern.replace('{}', '{id}')}")
            ids.append(int(got))
        elif got != want:
            raise InvalidArgument.field(field, f"must look like {pattern.replace('{}', '{id}')}")
    return tuple(ids)


def optional_id(name: str, collection: str, field: str) -> int | None:
    """Like :func:`parse_id`, but "" is None."""
    return parse_id(name, collection, field) if name else None
