"""Request validation that names every bad field at once (BadRequest)."""

from __future__ import annotations

import re
import unicodedata

from mallkit.errors import FieldViolation, InvalidArgument

_UNSAFE = re.compile(r"[<>\x00-\x1f\x7f]")


class Validator:
    """Collect violations, then :meth:`done` raises one INVALID_ARGUMENT with all."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def fail(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(field, description))

    def check(self, ok: bool, field: str, description: str) -> bool:
        if not ok:
            self.fail(field, description)
        return ok

    def text(self, field: str, value: str, *, max_len: int, min_len: int = 0, required: bool = False) -> bool:
        """Free text: length in characters, no control characters or angle brackets."""
        if not value:
            return self.check(not required and min_len == 0, field, "is required")
        if len(value) > max_len or len(value) < min_len:
            return self.check(False, field, f"must be {min_len} to {max_len} characters")
        if _UNSAFE.search(value) or any(unicodedata.category(c) == "Cs" for c in value):
            return self.check(False, field, "must not contain control characters or '<' '>'")
        return True

    def pattern(self, field: str, value: str, regex: re.Pattern[str], description: str, *, required: bool = False) -> bool:
        if not value:
            return self.check(not required, field, "is required")
        return self.check(bool(regex.fullmatch(value)), field, description)

    def enum(self, field: str, value: int, enum_type, *, required: bool = False) -> bool:
        """A proto enum value that exists (and is not UNSPECIFIED when required)."""
        if value not in enum_type.values():
            return self.check(False, field, "is not a known value")
        return self.check(not (required and value == 0), field, "is required")

    def range(self, field: str, value: int, lo: int, hi: int) -> bool:
        return self.check(lo <= value <= hi, field, f"must be between {lo} and {hi}")

    def done(self) -> None:
        if self.violations:
            first = self.violations[0]
            raise InvalidArgument(
                f"invalid {first.field}: {first.description}",
                field_violations=self.violations,
                metadata={"field": first.field},
            )


IDENTIFIER = re.compile(r"[A-Za-z0-9_-]{1,64}")
