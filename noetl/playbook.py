"""Reading a playbook: YAML text to a validated document, with errors that say where."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from noetl.templates import render, truthy

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


def runtime(document: dict[str, Any]) -> str:
    """The worker pools' runtime that runs this playbook's steps (`runtime`, default python)."""
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    return str(document.get("runtime") or metadata.get("runtime") or "python").strip().lower()


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
        Workflow(document)


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


START = "start"
END = "end"
STEP_TYPES = frozenset({"python", "http"})


@dataclass(frozen=True, slots=True)
class NextItem:
    step: str
    when: Any = None


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    definition: dict[str, Any]
    next: tuple[NextItem, ...] = field(default=())

    @property
    def type(self) -> str | None:
        """The action type; None for control steps (start, end, routers), which the broker runs."""
        return self.definition.get("type")

    @property
    def ends_branch(self) -> bool:
        return self.name == END or not self.next


def _next_items(name: str, raw: Any) -> tuple[NextItem, ...]:
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    parsed = []
    for item in items:
        if isinstance(item, str):
            parsed.append(NextItem(item))
        elif isinstance(item, dict) and isinstance(item.get("step"), str):
            parsed.append(NextItem(item["step"], item.get("when")))
        else:
            raise PlaybookError(f"step {name!r}: each `next` item needs a `step` name, got {item!r}")
    return tuple(parsed)


class Workflow:
    """A playbook's steps as a graph, checked when it is built."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.steps: dict[str, Step] = {}
        for raw in document.get("workflow") or []:
            name = raw["step"]
            if name in self.steps:
                raise PlaybookError(f"step {name!r} is defined twice")
            step_type = raw.get("type")
            if step_type is not None and step_type not in STEP_TYPES:
                raise PlaybookError(
                    f"step {name!r}: unknown type {step_type!r} (known: {sorted(STEP_TYPES)})"
                )
            self.steps[name] = Step(name, raw, _next_items(name, raw.get("next")))
        self._check()

    def _check(self) -> None:
        if START not in self.steps:
            raise PlaybookError("the workflow has no `start` step")
        for step in self.steps.values():
            for item in step.next:
                if item.step not in self.steps:
                    raise PlaybookError(f"step {step.name!r}: `next` names a missing step {item.step!r}")
        reachable = self._reachable_from(START)
        exits = {name for name, step in self.steps.items() if step.ends_branch}
        can_exit = set(exits)
        changed = True
        while changed:
            changed = False
            for step in self.steps.values():
                if step.name not in can_exit and any(i.step in can_exit for i in step.next):
                    can_exit.add(step.name)
                    changed = True
        trapped = sorted(reachable - can_exit)
        if trapped:
            raise PlaybookError(f"a cycle with no exit: steps {trapped} can never reach `end`")

    def _reachable_from(self, name: str) -> set[str]:
        seen, todo = set(), [name]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo += [item.step for item in self.steps[current].next]
        return seen

    def following(self, name: str, context: dict[str, Any]) -> list[str]:
        """The steps taken after `name`: those whose `when` is true, else those without `when`."""
        items = self.steps[name].next
        chosen = [i.step for i in items if i.when is not None and truthy(render(i.when, context))]
        return chosen or [i.step for i in items if i.when is None]
