"""A step's `auth:` in its three forms, read into items: which credential (or environment variable,
or inline fields) each alias stands for.

- `auth: pg_local`: the credential `pg_local`.
- `auth: {type: postgres, credential: pg_local}` (or `key:`), one item; `source` may also be
  `env` (with `name`), `secret` (the variable `NOETL_SECRET_<NAME>`) or `inline` (with `fields`).
- `auth: {pg: {...}, gcs: {...}}`: one item per alias (DuckDB attaches each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RESERVED = frozenset(
    {"source", "key", "credential", "name", "service", "type", "secret_name", "scope", "fields", "inject"}
)
SOURCES = frozenset({"credential", "env", "secret", "inline"})


class AuthError(ValueError):
    """The `auth` value cannot be read; the message says why."""


@dataclass(frozen=True, slots=True)
class AuthItem:
    alias: str | None
    source: str
    key: str | None = None  # the credential's name, or the environment variable's
    service: str | None = None  # postgres, gcs, s3, bearer, basic, api_key, header, ...
    fields: dict[str, Any] = field(default_factory=dict)


def items(auth: Any) -> list[AuthItem]:
    """The items of a rendered `auth` value (none for None)."""
    if auth is None or auth == "" or auth == {}:
        return []
    if isinstance(auth, str):
        return [AuthItem(None, "credential", auth.strip())]
    if not isinstance(auth, dict):
        raise AuthError(f"`auth` must be a credential name or a mapping, not {type(auth).__name__}")
    if RESERVED & auth.keys():
        return [_item(None, auth)]
    return [_item(alias, spec) for alias, spec in auth.items()]


def _item(alias: str | None, spec: Any) -> AuthItem:
    if isinstance(spec, str):
        return AuthItem(alias, "credential", spec.strip())
    if not isinstance(spec, dict):
        raise AuthError(f"auth {alias or ''}: each item is a credential name or a mapping")
    source = str(spec.get("source", "credential")).strip().lower()
    if source not in SOURCES:
        raise AuthError(
            f"auth {alias or ''}: unknown source {source!r} (known: {', '.join(sorted(SOURCES))})"
        )
    key = spec.get("key", spec.get("credential", spec.get("name")))
    service = spec.get("service", spec.get("type"))
    fields = spec.get("fields") or {}
    if not isinstance(fields, dict):
        raise AuthError(f"auth {alias or ''}: `fields` must be a mapping")
    if source != "inline" and not (isinstance(key, str) and key.strip()):
        what = "credential" if source == "credential" else "name"
        raise AuthError(f"auth {alias or ''}: a {source} item needs its `{what}`")
    return AuthItem(
        alias,
        source,
        key.strip() if isinstance(key, str) else None,
        str(service).strip().lower() if service else None,
        fields,
    )


def credential_names(auth: Any) -> set[str]:
    """The credentials that a rendered `auth` value asks for."""
    return {item.key for item in items(auth) if item.source == "credential" and item.key}


def secret_provider(value: Any) -> str:
    """A `secrets` step's provider: `credential` (the store), `env` (the worker's environment),
    or a cloud secret manager's name (not reachable here)."""
    name = str(value).strip().lower()
    if name in ("credential", "credentials", "noetl", "local"):
        return "credential"
    return "env" if name in ("env", "environment") else name


# A `secrets` step's result holds a reference, never the value: the worker of a later step that
# reads it fetches the value itself, so secrets are kept nowhere but where they are used.
SECRET_REF = "$noetl_secret"


def secret_ref(source: str, key: str, field: str | None) -> dict[str, Any]:
    return {SECRET_REF: {"source": source, "key": key, "field": field}}


def secret_refs(value: Any) -> list[dict[str, Any]]:
    """Every secret reference inside a value."""
    found: list[dict[str, Any]] = []
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            ref = item.get(SECRET_REF)
            if isinstance(ref, dict) and len(item) == 1:
                found.append(ref)
            else:
                todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return found
