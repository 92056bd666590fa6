"""What the broker knows of a run: the playbook's plan (parsed once per process) and the context
its templates see (the workload, the execution id, every step's latest result)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from psycopg import AsyncConnection

from consumers import offload
from noetl.playbook.document import runtime
from noetl.playbook.steps import IteratorStep, PythonStep, Step
from noetl.playbook.workflow import Workflow
from noetl.store import catalog as catalog_store
from noetl.store import jobs as job_store
from noetl.templates import Path, paths

PLAN_CACHE_SIZE = 512
INLINE_STEPS = 100


class Plan:
    """A catalog entry's workflow and runtime. Catalog entries never change, so plans are cached."""

    _cache: OrderedDict[int, Plan] = OrderedDict()

    def __init__(self, catalog_id: int, document: dict[str, Any]) -> None:
        self.catalog_id = catalog_id
        self.workflow = Workflow(document)
        self.runtime = runtime(document)
        self._paths: dict[str, frozenset[Path]] = {}
        self._tasks: dict[str, dict[str, Any]] = {}

    @classmethod
    async def get(
        cls, conn: AsyncConnection, catalog_id: int, document: dict[str, Any] | None = None
    ) -> Plan:
        """The plan of a catalog entry (its document read from the store unless given)."""
        plan = cls._cache.get(catalog_id)
        if plan is None:
            if document is None:
                entry = await catalog_store.by_id(conn, catalog_id)
                assert entry is not None, f"catalog entry {catalog_id} vanished"
                document = entry["payload"]
            steps = document.get("workflow") or []
            # A big workflow is parsed in the offload process, off the loop that applies commands.
            if len(steps) > INLINE_STEPS:
                plan = await offload.run(Plan, catalog_id, document)
            else:
                plan = cls(catalog_id, document)
            cls._cache[catalog_id] = plan
            if len(cls._cache) > PLAN_CACHE_SIZE:
                cls._cache.popitem(last=False)
        return plan

    def step(self, name: str) -> Step:
        return self.workflow.steps[name]

    def worker_step(self, step: Step) -> Step:
        """What a worker runs for `step`: the step, or an iterator's per-item task."""
        return step.item if isinstance(step, IteratorStep) else step

    def task(self, step: Step) -> dict[str, Any]:
        """The worker's copy of a step (or of an iterator's item task), dumped once."""
        key = f"{step.name}/{step.type}"
        if key not in self._tasks:
            self._tasks[key] = step.model_dump(mode="json", exclude={"next"})
        return self._tasks[key]

    def paths(self, step: Step) -> frozenset[Path] | None:
        """The context paths a worker's copy of `step` reads; None when it reads the whole context
        (python code that asks for it)."""
        if isinstance(step, PythonStep) and step.wants_context:
            return None
        key = f"{step.name}/{step.type}"
        if key not in self._paths:
            self._paths[key] = paths(step.templates())
        return self._paths[key]


class Context:
    """What the broker's templates see: the workload's keys, the workload itself, the execution id
    and each step's latest result by name (a workbook step's also by its task's name)."""

    def __init__(
        self, plan: Plan, execution_id: int, workload: dict[str, Any], results: dict[str, Any]
    ) -> None:
        self.plan = plan
        self.execution_id = execution_id
        self.workload = workload
        self.results = results
        self._values: dict[str, Any] | None = None

    @classmethod
    async def load(cls, conn: AsyncConnection, plan: Plan, execution_id: int) -> Context:
        workload, results = (await job_store.contexts(conn, [execution_id])).get(execution_id, ({}, {}))
        return cls.of(plan, execution_id, workload, results)

    @classmethod
    def of(cls, plan: Plan, execution_id: int, workload: dict[str, Any], results: dict[str, Any]) -> Context:
        context = cls(plan, execution_id, workload, {})
        for step, result in results.items():
            context.record(step, result)
        return context

    def record(self, step_name: str, result: Any) -> None:
        self.results[step_name] = result
        step = self.plan.workflow.steps.get(step_name)
        if step is not None and step.task and step.task not in self.plan.workflow.steps:
            self.results[step.task] = result
        self._values = None

    def values(self) -> dict[str, Any]:
        if self._values is None:
            self._values = {
                **self.workload,
                **self.results,
                "workload": self.workload,
                "execution_id": str(self.execution_id),
            }
        return self._values

    def with_(self, **names: Any) -> dict[str, Any]:
        return {**self.values(), **names}
