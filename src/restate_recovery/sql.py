"""Values placed in Restate's SQL: validated first, then quoted (single quotes doubled)."""

from __future__ import annotations

import re

NAME_PATTERN = r"^[a-zA-Z0-9_-]+$"
_NAME = re.compile(NAME_PATTERN)
INVOCATION_ID = re.compile(r"^inv_[0-9a-zA-Z]+$")  # also what the admin client puts in paths


def literal(value: str) -> str:
    """A SQL string literal. Rejects control characters; doubles single quotes."""
    if any(ord(ch) < 0x20 for ch in value):
        raise ValueError("control characters are not allowed in SQL values")
    return "'" + value.replace("'", "''") + "'"


def name_literal(value: str) -> str:
    """A service name or key as a literal, after checking it against ``^[a-zA-Z0-9_-]+$``."""
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r} does not match {NAME_PATTERN}")
    return literal(value)


def invocation_id_literal(value: str) -> str:
    if not INVOCATION_ID.fullmatch(value):
        raise ValueError(f"{value!r} is not an invocation id")
    return literal(value)


def is_name(value: str) -> bool:
    """Whether ``value`` is a service name or key ``name_literal`` takes."""
    return bool(_NAME.fullmatch(value))


def is_invocation_id(value: str) -> bool:
    return bool(INVOCATION_ID.fullmatch(value))
