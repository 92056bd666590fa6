"""Field types that several contracts share, and the rules for what the store can hold.

PostgreSQL's text and jsonb cannot hold U+0000, UTF-8 cannot carry a lone surrogate, and JSON has
no NaN or infinity: such input is refused where it arrives (the facade, and again where a command
arrives from the bus), never found out in the store.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, WithJsonSchema

NAME_MAX_LENGTH = 255
ID_MAX_LENGTH = 1024
INT64_MAX = 2**63 - 1

# Unicode's control (Cc), format (Cf) and surrogate (Cs) characters, as of Python 3.11's Unicode
# 14.0 (`tests/test_fields.py` checks this against `unicodedata`). Written as regex escapes, so the
# OpenAPI document that carries the pattern is plain ASCII.
CONTROL = (
    r"\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f"
    r"\u202a-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    r"\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)
# A name: 1 to 255 characters, none of them control characters, once the whitespace around it is
# stripped (whitespace as `str.strip` sees it, which is what `\s` means to Python's `re`).
NAME_PATTERN = rf"^\s*[^\s{CONTROL}](?:[^{CONTROL}]{{0,{NAME_MAX_LENGTH - 2}}}[^\s{CONTROL}])?\s*$"
_NAME = re.compile(NAME_PATTERN)
NO_NUL_PATTERN = r"^[^\x00]*$"
"""For query and path parameters: URLs cannot carry a lone surrogate, but they can carry NUL."""


class Unstorable(ValueError):
    """A JSON value the store cannot hold, or nested deeper than the limit."""


def _check_text(text: str, where: str) -> None:
    if text.isascii():
        if "\x00" in text:
            raise Unstorable(f"{where}: must not contain the NUL character")
        return
    if "\x00" in text:
        raise Unstorable(f"{where}: must not contain the NUL character")
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        surrogate = f"\\u{ord(text[exc.start]):04x}"
        raise Unstorable(f"{where}: must not contain a lone surrogate ({surrogate})") from None


def check_json(value: Any, max_depth: int | None = None) -> Any:
    """Refuse what JSON text or the store cannot hold: NUL, lone surrogates, NaN and infinities;
    and, given `max_depth`, arrays and objects nested deeper (a bare scalar is depth 0).

    Iterative, so no input is deep enough to exhaust the stack. Returns `value`.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, "$")]
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise Unstorable(f"{where}: {item} is not a number JSON can hold")
        elif isinstance(item, dict | list):
            depth += 1
            if max_depth is not None and depth > max_depth:
                raise Unstorable(f"{where}: nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str):
                        _check_text(key, f"{where} (a key)")
                    stack.append((child, depth, f"{where}.{key}"))
            else:
                stack.extend((child, depth, f"{where}[{i}]") for i, child in enumerate(item))
    return value


def int64(text: str) -> int | None:
    """The non-negative int64 that `text` spells in ASCII digits, else None.

    `str.isdigit` also accepts digits such as ``²`` that `int` refuses, and `int` accepts
    non-ASCII decimal digits, signs, spaces and underscores: neither is an id.
    """
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    value = int(text)
    return value if value <= INT64_MAX else None


def _coerce_str(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        raise ValueError("must be a string or a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return str(value)


def _clean_name(value: Any) -> Any:
    value = _coerce_str(value)
    if not isinstance(value, str):
        return value
    stripped = value.strip()
    # Most names are printable ASCII or printable text: no control character can be in them.
    if stripped and len(stripped) <= NAME_MAX_LENGTH and stripped.isprintable():
        return stripped
    if not stripped:
        raise ValueError("must not be empty")
    if len(stripped) > NAME_MAX_LENGTH:
        raise ValueError(f"must be at most {NAME_MAX_LENGTH} characters")
    if not _NAME.match(value):
        raise ValueError("must not contain control characters")
    return stripped


def _strip(value: Any) -> Any:
    value = _coerce_str(value)
    if isinstance(value, str):
        _check_text(value, "text")
        return value.strip()
    return value


def _clean_id(value: Any) -> Any:
    value = _coerce_str(value)
    if isinstance(value, str):
        _check_text(value, "id")
        if len(value) > ID_MAX_LENGTH:
            raise ValueError(f"must be at most {ID_MAX_LENGTH} characters")
        if value.isdigit() and not value.isascii():
            raise ValueError("digits must be ASCII 0-9")
    return value


def _text(value: str) -> str:
    _check_text(value, "text")
    return value


def _assume_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _scalar_schema(string: dict[str, Any]) -> WithJsonSchema:
    """A string field that also takes a number or a boolean and keeps it as text."""
    return WithJsonSchema({"anyOf": [{"type": "string", **string}, {"type": "number"}, {"type": "boolean"}]})


Name = Annotated[
    str,
    BeforeValidator(_clean_name),
    _scalar_schema({"minLength": 1, "pattern": NAME_PATTERN}),
]
"""A component's name: any scalar as a stripped string; dots, spaces and `*` are fine."""

StrippedStr = Annotated[str, BeforeValidator(_strip), _scalar_schema({})]
"""Text with the whitespace around it stripped; a number or a boolean is taken as its text."""

IdStr = Annotated[str, BeforeValidator(_clean_id), _scalar_schema({"maxLength": ID_MAX_LENGTH})]
"""An id: integers are accepted and kept as strings, since JavaScript loses 64-bit precision."""

JsonObject = Annotated[dict[str, Any], AfterValidator(check_json)]
"""A free-form JSON object that the store can hold."""

StoredText = Annotated[str, AfterValidator(check_json)]
"""Text that the store can hold: no NUL, no lone surrogate."""

RowId = Annotated[str, Field(pattern=r"^[0-9]{1,18}$")]
"""The id of a row (a bigint identity), as text: what workers and consumers send one another."""


def escaped(text: str) -> str:
    """Any text made storable, for messages about input that was not: NUL and lone surrogates
    written as escapes."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()


OutId = Annotated[int | str, PlainSerializer(lambda v: str(v), return_type=str)]
"""An id on output: always a JSON string."""

UtcDatetime = Annotated[datetime, AfterValidator(_assume_utc)]
"""A point in time; one without an offset is taken as UTC, so any two compare."""

Text = Annotated[str, AfterValidator(_text)]
"""Text compared with stored text: no NUL, no lone surrogate."""

Limit = Annotated[int | None, Field(ge=1, le=INT64_MAX)]
"""How many items a page holds; None for all of them."""

Offset = Annotated[int, Field(ge=0, le=INT64_MAX)]
"""How many items come before the page."""
