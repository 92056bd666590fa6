"""Reading a playbook: YAML text to a validated document, with errors that say where."""

from __future__ import annotations

from typing import Any

import yaml

PLAYBOOK_KIND = "Playbook"


class PlaybookError(ValueError):
    """The text is not a playbook we can register; the message says why and where."""


def parse(text: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PlaybookError(f"invalid YAML{where}: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise PlaybookError(f"invalid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise PlaybookError("a playbook is a YAML mapping (apiVersion, kind, metadata, workflow)")
    return document


def catalog_path(document: dict[str, Any]) -> str:
    """`metadata.path`, then `path`, then `metadata.name`, then `name`."""
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    for candidate in (metadata.get("path"), document.get("path"), metadata.get("name"), document.get("name")):
        if isinstance(candidate, str | int) and str(candidate).strip():
            return str(candidate).strip().strip("/")
    raise PlaybookError("the playbook has no path: set metadata.path or metadata.name")


def validate(document: dict[str, Any], resource_type: str) -> None:
    kind = document.get("kind", resource_type)
    if kind != resource_type:
        raise PlaybookError(f"the document's kind is {kind!r}, not {resource_type!r}")
    if resource_type == PLAYBOOK_KIND:
        workflow = document.get("workflow")
        if not isinstance(workflow, list) or not workflow:
            raise PlaybookError("a playbook needs a non-empty `workflow` list of steps")
        for index, step in enumerate(workflow):
            if not isinstance(step, dict) or not isinstance(step.get("step"), str):
                raise PlaybookError(f"workflow[{index}] is not a step: each needs a `step` name")
        workload = document.get("workload", {})
        if workload is not None and not isinstance(workload, dict):
            raise PlaybookError("`workload` must be a mapping")


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
