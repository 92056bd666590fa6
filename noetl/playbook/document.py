"""A playbook's YAML text read into a JSON-shaped document, within limits, with errors that say where.

YAML can say more than JSON and PostgreSQL can hold, and little text can say a lot: aliases
expand (a 1 KB "billion laughs" is gigabytes of JSON), nesting recurses. So the document is built
by a loader that keeps timestamps as the text they were written as, refuses sets, binary and
non-finite numbers, and is then walked once, iteratively, counting every value as JSON would
repeat it: past `max_nodes`, `max_depth` or a recursive alias, the text is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

PLAYBOOK_KIND = "Playbook"
DEFAULT_RUNTIME = "python"


class PlaybookError(ValueError):
    """The text is not a playbook we can register or run; the message says why and where."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one playbook may weigh once its aliases are expanded."""

    max_nodes: int = 200_000
    max_depth: int = 64
    max_steps: int = 5_000


DEFAULT_LIMITS = Limits()


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader (libyaml's when the wheel has it: fast, and its nesting is bounded) without
    timestamps: `2024-01-01` stays the string it was written as."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _refuse(what: str) -> Any:
    def construct(loader: Any, node: yaml.Node) -> Any:
        mark = node.start_mark
        raise PlaybookError(f"{what} at line {mark.line + 1}, column {mark.column + 1}: JSON cannot hold it")

    return construct


_Loader.add_constructor("tag:yaml.org,2002:set", _refuse("a YAML set"))
_Loader.add_constructor("tag:yaml.org,2002:binary", _refuse("YAML binary data"))
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _refuse("a YAML timestamp"))


class _PureLoader(yaml.SafeLoader):
    """The pure-Python loader: slower, but its errors point where the problem began."""


_PureLoader.yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers
EXPLAIN_BELOW = 64 * 1024  # a refused text this small is read again, by _PureLoader, to say where


def load(text: str, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The YAML text as a document (a mapping), or PlaybookError."""
    try:
        document = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        if len(text) < EXPLAIN_BELOW and "nesting depth" not in str(exc.problem):
            try:
                yaml.load(text, Loader=_PureLoader)
            except yaml.MarkedYAMLError as pure:
                exc = pure
            except (yaml.YAMLError, RecursionError):
                pass
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PlaybookError(f"invalid YAML{where}: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise PlaybookError(f"invalid YAML: {exc}") from exc
    except RecursionError:
        raise PlaybookError("the YAML is nested too deeply") from None
    if not isinstance(document, dict):
        raise PlaybookError("a playbook is a YAML mapping (apiVersion, kind, metadata, workflow)")
    return as_json(document, limits)


def as_json(value: Any, limits: Limits) -> Any:
    """A copy of `value` that JSON holds: string keys, finite numbers, text without NUL or lone
    surrogates; shared values (aliases) copied, and counted, each time they appear."""
    root: list[Any] = [None]
    todo: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 0)]  # value, its copy's container, key, depth
    nodes = 0
    while todo:
        item, parent, key, depth = todo.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise PlaybookError(
                f"the playbook has more than {limits.max_nodes} values once its aliases expand"
            )
        if depth > limits.max_depth:
            # A recursive alias never ends, so it ends here too.
            raise PlaybookError(
                f"the playbook is nested deeper than {limits.max_depth} levels (or an alias recurses)"
            )
        if isinstance(item, dict):
            copy: Any = {}
            for k, v in item.items():
                name = _key(k)
                copy[name] = None
                todo.append((v, copy, name, depth + 1))
            parent[key] = copy
        elif isinstance(item, list):
            copy = [None] * len(item)
            todo.extend((v, copy, i, depth + 1) for i, v in enumerate(item))
            parent[key] = copy
        else:
            parent[key] = _scalar(item)
    return root[0]


def _key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, int | float | str):
        return _text(str(_scalar(key)))
    raise PlaybookError(f"a mapping key must be a scalar, not {type(key).__name__}")


def _scalar(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise PlaybookError(f"{value} is not a number JSON can hold")
    if isinstance(value, str):
        return _text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    raise PlaybookError(f"a value of type {type(value).__name__} cannot be stored")


def _text(text: str) -> str:
    if "\x00" in text:
        raise PlaybookError("text in the playbook must not contain the NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PlaybookError("text in the playbook must not contain lone surrogates") from None
    return text


def _metadata(document: dict[str, Any]) -> dict[str, Any]:
    metadata = document.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def catalog_path(document: dict[str, Any]) -> str:
    """`metadata.path`, then `path`, then `metadata.name`, then `name`; never empty."""
    metadata = _metadata(document)
    for candidate in (metadata.get("path"), document.get("path"), metadata.get("name"), document.get("name")):
        if isinstance(candidate, str | int) and not isinstance(candidate, bool):
            path = str(candidate).strip().strip("/").strip()
            if path:
                return path
    raise PlaybookError("the playbook has no path: set metadata.path or metadata.name")


def runtime(document: dict[str, Any]) -> str:
    """The worker pools' runtime that runs this playbook's steps (`runtime`, default python)."""
    value = document.get("runtime") or _metadata(document).get("runtime") or DEFAULT_RUNTIME
    return str(value).strip().lower() or DEFAULT_RUNTIME


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, recursing where both sides hold a mapping."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def workload(document: dict[str, Any], parameters: dict[str, Any], merge: bool) -> dict[str, Any]:
    """The execution's workload: the playbook's, overridden by the request's parameters."""
    base = document.get("workload") or {}
    return deep_merge(base, parameters) if merge else {**base, **parameters}
