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


def context(execution: dict[str, Any], jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """What templates see: the workload, the execution id, and every completed step by name
    (`jobs` oldest first, so a later run of a step wins)."""
    ctx: dict[str, Any] = {"workload": execution["workload"], "execution_id": str(execution["execution_id"])}
    for job in jobs:
        if job["status"] == "completed":
            result = job["result"]
            ctx[job["step"]] = (
                {**result, "result": result} if isinstance(result, dict) else {"result": result}
            )
    return ctx


class Broker:
    """One execution's graph walked inside the caller's transaction.

    Dispatches and events are held until `flush`, which writes those of many brokers at once.
    """

    def __init__(self, conn: AsyncConnection, execution: dict[str, Any], plan: Plan) -> None:
        self.conn = conn
        self.execution = execution
        self.plan = plan
        self.events: list[NewEvent] = []
        self.pending: list[tuple[playbook.Step, dict[str, Any]]] = []

    def emit(self, event_type: str, **payload: Any) -> None:
        self.events.append(execution_event(self.execution, event_type, **payload))

    def enter(self, names: list[str], ctx: dict[str, Any]) -> None:
        """Run control steps in place; action steps wait in `pending` for their jobs."""
        todo, hops = list(names), 0
        while todo:
            hops += 1
            if hops > MAX_CONTROL_HOPS:
                raise ExecutionFailed(f"control steps looped more than {MAX_CONTROL_HOPS} times")
            step = self.plan.workflow.steps[todo.pop(0)]
            if step.type is not None:
                self.pending.append((step, ctx))
            elif not step.ends_branch:
                todo += self.following(step.name, ctx)

    def following(self, name: str, ctx: dict[str, Any]) -> list[str]:
        try:
            return self.plan.workflow.following(name, ctx)
        except RenderError as exc:
            raise ExecutionFailed(f"step {name!r}: `when` {exc}") from exc

    def job_event(self, step: playbook.Step, ctx: dict[str, Any], row: dict[str, Any]) -> NewEvent:
        execution_id = str(self.execution["execution_id"])
        job = Job(
            job_id=str(row["job_id"]),
            execution_id=execution_id,
            step=step.name,
            definition=step.definition,
            context=ctx,
            runtime=self.plan.runtime,
            dispatched_at=row["dispatched_at"],
        )
        return NewEvent(
            type="job.dispatched",
            subject=subjects.job(self.plan.runtime),
            entity={"domain": "job", "execution_id": execution_id, "job_id": job.job_id},
            payload=job.model_dump(mode="json"),
        )

    async def settle(self, result: Any, active: int, completed: int) -> None:
        """Complete the execution when no job is left (`active` live jobs besides the pending
        ones); otherwise record its progress."""
        execution_id = self.execution["execution_id"]
        if active + len(self.pending) == 0:
            row = await store.finish(self.conn, execution_id, status="completed", result=result)
            if row is not None:
                self.events.append(execution_event(row, "execution_complete", result=result))
        elif completed:
            await store.set_progress(self.conn, execution_id, min(99, 100 * completed // self.plan.actions))

    async def fail(self, error: str) -> None:
        """Fail the execution: its live jobs are abandoned and its pending ones never dispatched."""
        execution_id = self.execution["execution_id"]
        self.pending = []
        await job_store.abandon_active(self.conn, execution_id)
        row = await store.finish(self.conn, execution_id, status="failed", error=error)
        if row is not None:
            self.events.append(execution_event(row, "execution_failed", error=error))


async def flush(conn: AsyncConnection, brokers: list[Broker]) -> None:
    """The brokers' pending jobs, inserted by one statement, then all their events by one."""
    wanted = [(b, step, ctx) for b in brokers for step, ctx in b.pending]
    rows = await job_store.add(conn, [(b.execution["execution_id"], step.name) for b, step, _ in wanted])
    for (b, step, ctx), row in zip(wanted, rows, strict=True):
        b.events.append(b.job_event(step, ctx, row))
    await add_events(conn, [event for b in brokers for event in b.events])
    for b in brokers:
        b.pending, b.events = [], []


async def start(
    conn: AsyncConnection, started: list[tuple[dict[str, Any], dict[str, Any], NewEvent]]
) -> None:
    """Walk new executions from `start` in the transaction that created them; each comes as
    (execution, playbook document, its first event)."""
    brokers = []
    for execution, document, first in started:
        broker = Broker(conn, execution, Plan.of(execution["catalog_id"], document))
        broker.events.append(first)
        try:
            broker.enter([playbook.START], context(execution, []))
            await broker.settle(None, active=0, completed=0)
        except ExecutionFailed as exc:
            await broker.fail(str(exc))
        brokers.append(broker)
    await flush(conn, brokers)


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
    # An attempt that ended before its worker reported its start carries the start in this report.
    ran = report.kind != "exhausted"
    if ran and (job["delivery"], job["attempt"]) < (report.delivery, report.attempt):
        if report.kind in ("started", "attempt_failed"):
            await job_store.started(
                conn, job["job_id"], delivery=report.delivery, attempt=report.attempt, worker=report.worker
            )
        if job["status"] == "queued":
            broker.emit("step_started", dispatched_at=job["dispatched_at"].isoformat(), **who)
        broker.emit("action_started", **who)
    if report.kind == "attempt_failed":
        broker.emit("action_error", error=report.error, **who)
    elif report.kind in ("failed", "exhausted"):
        await job_store.finished(conn, job["job_id"], status="failed", report=report)
        if ran:
            broker.emit("action_error", error=report.error, **who)
        broker.emit("step_failed", error=report.error, **who)
        await broker.fail(f"step {report.step!r} failed: {report.error}")
    elif report.kind == "completed":
        # The update, and the read of the execution's jobs that sees it, in one round trip.
        async with conn.pipeline():
            await job_store.finished(conn, job["job_id"], status="completed", report=report)
            jobs = await job_store.of_execution(conn, execution["execution_id"])
        broker.emit("action_completed", **who)
        broker.emit("step_completed", result=report.result, **who)
        await _advance(broker, report, await jobs.fetchall())
    await flush(conn, [broker])
    return report.kind


async def _advance(broker: Broker, report: StepReport, jobs: list[dict[str, Any]]) -> None:
    """`jobs`: the execution's jobs, this one finished, read once for the context and the counts."""
    step = broker.plan.workflow.steps.get(report.step)
    try:
        if step is not None and not step.ends_branch:
            ctx = context(broker.execution, jobs)
            broker.enter(broker.following(step.name, ctx), ctx)
        active = sum(1 for job in jobs if job["status"] not in job_store.FINISHED)
        completed = sum(1 for job in jobs if job["status"] == "completed")
        await broker.settle(report.result, active, completed)
    except ExecutionFailed as exc:
        await broker.fail(str(exc))
