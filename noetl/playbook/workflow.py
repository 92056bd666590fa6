"""A playbook's workflow as a graph of typed steps, checked when it is built (in linear time), and
the choice of the steps that follow one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from noetl.playbook.document import DEFAULT_LIMITS, PLAYBOOK_KIND, Limits, PlaybookError, catalog_path, load
from noetl.playbook.parse import parse_step
from noetl.playbook.steps import Branch, Next, Otherwise, Step, StepType
from noetl.templates import render, truthy

START = "start"
END = "end"


class Workflow:
    """The steps by name, where a run begins, and which steps can be entered more than once."""

    def __init__(self, document: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> None:
        raw_steps = document.get("workflow", document.get("steps"))
        if not isinstance(raw_steps, list) or not raw_steps:
            raise PlaybookError("a playbook needs a non-empty `workflow` list of steps")
        if len(raw_steps) > limits.max_steps:
            raise PlaybookError(
                f"the workflow has {len(raw_steps)} steps; at most {limits.max_steps} are allowed"
            )
        workload = document.get("workload")
        if workload is not None and not isinstance(workload, dict):
            raise PlaybookError("`workload` must be a mapping")
        workbook = _workbook(document.get("workbook"))
        self.steps: dict[str, Step] = {}
        for index, raw in enumerate(raw_steps):
            step = parse_step(raw, index, workbook)
            if step.name in self.steps:
                raise PlaybookError(f"step {step.name!r} is defined twice")
            self.steps[step.name] = step
        # No `start` step: the run begins at the first step of the workflow.
        self.first = START if START in self.steps else next(iter(self.steps))
        self.joins = self._check()
        self.actions = sum(
            1 for s in self.steps.values() if s.type not in (StepType.START, StepType.END, StepType.ROUTER)
        )

    def targets(self, step: Step) -> list[Next]:
        """Every step `step` may go to, whatever its conditions say."""
        found: list[Next] = []
        for transition in step.next:
            if isinstance(transition, Next):
                found.append(transition)
            elif isinstance(transition, Branch):
                found += [*transition.then, *transition.otherwise]
            else:
                found += transition.otherwise
        return found

    def _check(self) -> frozenset[str]:
        """Every `next` names a step; every step the run can reach can also reach an end. Returns
        the steps with more than one way in (fan-in points and loop entries)."""
        into: dict[str, list[str]] = {name: [] for name in self.steps}
        for step in self.steps.values():
            for target in self.targets(step):
                if target.step not in self.steps:
                    raise PlaybookError(f"step {step.name!r}: `next` names a missing step {target.step!r}")
                into[target.step].append(step.name)
        reachable = self._walk([self.first], lambda name: [t.step for t in self.targets(self.steps[name])])
        exits = [name for name, step in self.steps.items() if name == END or not step.next]
        can_exit = self._walk(exits, into.__getitem__)
        trapped = [name for name in self.steps if name in reachable and name not in can_exit]
        if trapped:
            raise PlaybookError(f"a cycle with no exit: steps {trapped[:10]} can never reach an end")
        return frozenset(name for name, sources in into.items() if len(sources) > 1)

    @staticmethod
    def _walk(roots: list[str], edges: Callable[[str], list[str]]) -> set[str]:
        seen: set[str] = set(roots)
        todo = list(roots)
        while todo:
            for following in edges(todo.pop()):
                if following not in seen:
                    seen.add(following)
                    todo.append(following)
        return seen

    def following(self, step: Step, context: Mapping[str, Any]) -> list[Next]:
        """The targets taken after `step`: those whose `when` renders truthy in `context` (a
        `then`, or its `else` when the condition fails); when no condition held, also every
        target without one and every lone `else`. Several true conditions fan out. Raises
        RenderError for a `when` that does not render."""

        def holds(when: str | bool) -> bool:
            return when if isinstance(when, bool) else truthy(render(when, context))

        taken: list[Next] = []
        defaults: list[Next] = []
        any_held = False
        for transition in step.next:
            if isinstance(transition, Otherwise):
                defaults += transition.otherwise
            elif isinstance(transition, Branch):
                if holds(transition.when):
                    any_held = True
                    taken += transition.then
                else:
                    taken += transition.otherwise
            elif transition.when is None:
                defaults.append(transition)
            elif holds(transition.when):
                any_held = True
                taken.append(transition)
        return taken if any_held else taken + defaults


def _workbook(raw: Any) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise PlaybookError("`workbook` must be a list of named tasks")
    tasks: dict[str, dict[str, Any]] = {}
    for index, task in enumerate(raw):
        if not isinstance(task, dict) or not isinstance(task.get("name"), str):
            raise PlaybookError(f"workbook[{index}] needs a `name`")
        if task["name"] in tasks:
            raise PlaybookError(f"workbook task {task['name']!r} is defined twice")
        tasks[task["name"]] = task
    return tasks


def validate(
    document: Mapping[str, Any], resource_type: str, limits: Limits = DEFAULT_LIMITS
) -> Workflow | None:
    """Check a document registered as `resource_type`; playbooks get their workflow built."""
    kind = document.get("kind", resource_type)
    if kind != resource_type:
        raise PlaybookError(f"the document's kind is {kind!r}, not {resource_type!r}")
    return Workflow(document, limits) if resource_type == PLAYBOOK_KIND else None


def read(text: str, resource_type: str, limits: Limits = DEFAULT_LIMITS) -> tuple[str, dict[str, Any]]:
    """A registration's text as (catalog path, document), checked; or PlaybookError."""
    document = load(text, limits)
    validate(document, resource_type, limits)
    return catalog_path(document), document
