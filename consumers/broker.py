"""The broker: it decides what runs, and applies what workers report, as a state machine.

Control steps (no `type`: start, end, routers) are evaluated here; action steps become jobs,
inserted as rows and published through the outbox to the jobs stream of the playbook's runtime,
so a dispatch commits with the state that caused it. A report is applied only while both the
execution and the job are live and the report comes from the job's current delivery: a terminal
state is never overwritten and a dead attempt's late word is ignored.
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg import AsyncConnection

from noetl import playbook
from noetl.bus import subjects
from noetl.contracts.jobs import Job, StepReport
from noetl.store import catalog as catalog_store
from noetl.store import executions as store
from noetl.store import jobs as job_store
from noetl.store.outbox import NewEvent, add_events
from noetl.templates import RenderError

log = logging.getLogger(__name__)

MAX_CONTROL_HOPS = 1000
WORKFLOW_CACHE_SIZE = 512


class ExecutionFailed(Exception):
    """The playbook cannot go on (a `when` that does not render, a loop of control steps)."""


# A step event's `status` is the step's (or the attempt's); an execution event's is the execution's.
STEP_STATUS = {
    "step_started": "running",
    "action_started": "running",
    "action_completed": "completed",
    "step_completed": "completed",
    "action_error": "failed",
    "step_failed": "failed",
}


def execution_event(row: dict[str, Any], event_type: str, **payload: Any) -> NewEvent:
    execution_id = str(row["execution_id"])
    status = STEP_STATUS.get(event_type, row["status"])
    return NewEvent(
        type=event_type,
        subject=subjects.execution_event(execution_id, event_type),
        entity={"domain": "execution", "execution_id": execution_id},
        payload={"status": status, "path": row["path"], "version": row["version"], **payload},
    )


class Plan:
    """A catalog entry's graph and runtime. Catalog entries never change, so plans are cached."""

    _cache: dict[int, Plan] = {}

    def __init__(self, document: dict[str, Any]) -> None:
        self.workflow = playbook.Workflow(document)
        self.runtime = playbook.runtime(document)
        self.actions = sum(1 for step in self.workflow.steps.values() if step.type is not None) or 1

    @classmethod
    def of(cls, catalog_id: int, document: dict[str, Any]) -> Plan:
        plan = cls._cache.get(catalog_id)
        if plan is None:
            if len(cls._cache) >= WORKFLOW_CACHE_SIZE:
                cls._cache.clear()
            plan = cls._cache[catalog_id] = cls(document)
        return plan

    @classmethod
    async def load(cls, conn: AsyncConnection, catalog_id: int) -> Plan:
        plan = cls._cache.get(catalog_id)
        if plan is not None:
            return plan
        entry = await catalog_store.by_id(conn, catalog_id)
        assert entry is not None, f"catalog entry {catalog_id} vanished"
        return cls.of(catalog_id, entry["payload"])


async def context(conn: AsyncConnection, execution: dict[str, Any]) -> dict[str, Any]:
    """What templates see: the workload, the execution id, and every finished step by name."""
    ctx: dict[str, Any] = {"workload": execution["workload"], "execution_id": str(execution["execution_id"])}
    for row in await job_store.results(conn, execution["execution_id"]):
        result = row["result"]
        ctx[row["step"]] = {**result, "result": result} if isinstance(result, dict) else {"result": result}
    return ctx


class Broker:
    """One execution's graph walked inside the caller's transaction; its events go out at once."""

    def __init__(self, conn: AsyncConnection, execution: dict[str, Any], plan: Plan) -> None:
        self.conn = conn
        self.execution = execution
        self.plan = plan
        self.events: list[NewEvent] = []

    def emit(self, event_type: str, **payload: Any) -> None:
        self.events.append(execution_event(self.execution, event_type, **payload))

    async def enter(self, names: list[str], ctx: dict[str, Any]) -> None:
        """Run control steps in place and dispatch action steps as jobs."""
        todo, hops = list(names), 0
        while todo:
            hops += 1
            if hops > MAX_CONTROL_HOPS:
                raise ExecutionFailed(f"control steps looped more than {MAX_CONTROL_HOPS} times")
            step = self.plan.workflow.steps[todo.pop(0)]
            if step.type is not None:
                await self._dispatch(step, ctx)
            elif not step.ends_branch:
                todo += self.following(step.name, ctx)

    def following(self, name: str, ctx: dict[str, Any]) -> list[str]:
        try:
            return self.plan.workflow.following(name, ctx)
        except RenderError as exc:
            raise ExecutionFailed(f"step {name!r}: `when` {exc}") from exc

    async def _dispatch(self, step: playbook.Step, ctx: dict[str, Any]) -> None:
        execution_id = self.execution["execution_id"]
        row = await job_store.add(self.conn, execution_id, step.name)
        job = Job(
            job_id=str(row["job_id"]),
            execution_id=str(execution_id),
            step=step.name,
            definition=step.definition,
            context=ctx,
            runtime=self.plan.runtime,
            dispatched_at=row["dispatched_at"],
        )
        self.events.append(
            NewEvent(
                type="job.dispatched",
                subject=subjects.job(self.plan.runtime),
                entity={"domain": "job", "execution_id": str(execution_id), "job_id": job.job_id},
                payload=job.model_dump(mode="json"),
            )
        )

    async def settle(self, result: Any) -> None:
        """Complete the execution when no job is left; otherwise record its progress."""
        execution_id = self.execution["execution_id"]
        active, finished = await job_store.counts(self.conn, execution_id)
        if active == 0:
            row = await store.finish(self.conn, execution_id, status="completed", result=result)
            if row is not None:
                self.events.append(execution_event(row, "execution_complete", result=result))
        elif finished:
            await store.set_progress(self.conn, execution_id, min(99, 100 * finished // self.plan.actions))

    async def fail(self, error: str) -> None:
        """Fail the execution: its pending jobs are abandoned and are not dispatched."""
        execution_id = self.execution["execution_id"]
        await job_store.abandon_active(self.conn, execution_id)
        row = await store.finish(self.conn, execution_id, status="failed", error=error)
        self.events = [e for e in self.events if e.type != "job.dispatched"]
        if row is not None:
            self.events.append(execution_event(row, "execution_failed", error=error))

    async def flush(self) -> None:
        await add_events(self.conn, self.events)
        self.events = []


async def start(
    conn: AsyncConnection, execution: dict[str, Any], document: dict[str, Any], first: NewEvent
) -> None:
    """Walk from `start` in the transaction that created the execution (its first event given)."""
    broker = Broker(conn, execution, Plan.of(execution["catalog_id"], document))
    broker.events.append(first)
    try:
        await broker.enter([playbook.START], await context(conn, execution))
        await broker.settle(None)
    except ExecutionFailed as exc:
        await broker.fail(str(exc))
    await broker.flush()


async def apply_report(conn: AsyncConnection, report: StepReport) -> str:
    """Apply one report; returns what became of it (for the command's outcome)."""
    locked = await job_store.lock_with_execution(conn, int(report.job_id), int(report.execution_id))
    if locked is None:
        return "unknown job"
    job, execution = locked
    if execution["status"] in store.TERMINAL:
        return f"ignored: execution is {execution['status']}"
    if job["status"] in job_store.FINISHED:
        return f"ignored: job is {job['status']}"
    if report.delivery < job["delivery"]:
        return "ignored: a report from an earlier delivery"
    broker = Broker(conn, execution, await Plan.load(conn, execution["catalog_id"]))
    who = {"step": report.step, "attempt": report.attempt, "worker": report.worker, "job_id": report.job_id}
    if report.kind == "started":
        await job_store.started(
            conn, job["job_id"], delivery=report.delivery, attempt=report.attempt, worker=report.worker
        )
        if job["status"] == "queued":
            broker.emit("step_started", dispatched_at=job["dispatched_at"].isoformat(), **who)
        broker.emit("action_started", **who)
    elif report.kind == "attempt_failed":
        broker.emit("action_error", error=report.error, **who)
    elif report.kind == "failed":
        await job_store.finished(conn, job["job_id"], status="failed", report=report)
        broker.emit("action_error", error=report.error, **who)
        broker.emit("step_failed", error=report.error, **who)
        await broker.fail(f"step {report.step!r} failed: {report.error}")
    else:
        await job_store.finished(conn, job["job_id"], status="completed", report=report)
        broker.emit("action_completed", **who)
        broker.emit("step_completed", result=report.result, **who)
        await _advance(broker, report)
    await broker.flush()
    return report.kind


async def _advance(broker: Broker, report: StepReport) -> None:
    step = broker.plan.workflow.steps.get(report.step)
    try:
        if step is not None and not step.ends_branch:
            ctx = await context(broker.conn, broker.execution)
            await broker.enter(broker.following(step.name, ctx), ctx)
        await broker.settle(report.result)
    except ExecutionFailed as exc:
        await broker.fail(str(exc))
