"""Field types that several contracts share."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

NAME_MAX_LENGTH = 255


def _no_nul(value: Any) -> Any:
    """PostgreSQL's text and jsonb cannot hold U+0000: refuse it at the edge, not in the store."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain the NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key)
            _no_nul(item)
    elif isinstance(value, list):
        for item in value:
            _no_nul(item)
    return value


def _coerce_str(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        raise ValueError("must be a string or a number")
    return str(value)


def _clean_name(value: Any) -> Any:
    value = _coerce_str(value)
    if not isinstance(value, str):
        return value
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if len(value) > NAME_MAX_LENGTH:
        raise ValueError(f"must be at most {NAME_MAX_LENGTH} characters")
    # isprintable() is false for every control character (and for some spaces, which are fine).
    if not value.isprintable() and any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in value):
        raise ValueError("must not contain control characters")
    return value


def _strip(value: Any) -> Any:
    value = _coerce_str(value)
    return value.strip() if isinstance(value, str) else value


def _assume_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


Name = Annotated[str, BeforeValidator(_clean_name)]
"""A component's name: any scalar as a stripped string; dots, spaces and `*` are fine."""

StrippedStr = Annotated[str, BeforeValidator(_strip), AfterValidator(_no_nul)]

IdStr = Annotated[str, BeforeValidator(_coerce_str)]
"""An id: integers are accepted and kept as strings, since JavaScript loses 64-bit precision."""

JsonObject = Annotated[dict[str, Any], AfterValidator(_no_nul)]
"""A free-form JSON object that the store can hold."""

OutId = Annotated[int | str, PlainSerializer(lambda v: str(v), return_type=str)]
"""An id on output: always a JSON string."""

UtcDatetime = Annotated[datetime, AfterValidator(_assume_utc)]
"""A point in time; one without an offset is taken as UTC, so any two compare."""
