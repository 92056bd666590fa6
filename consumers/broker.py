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


async def _document(conn: AsyncConnection, catalog_id: int) -> dict[str, Any]:
    entry = await catalog_store.by_id(conn, catalog_id)
    assert entry is not None, f"catalog entry {catalog_id} vanished"
    return entry["payload"]


async def context(conn: AsyncConnection, execution: dict[str, Any]) -> dict[str, Any]:
    """What templates see: the workload, the execution id, and every finished step by name."""
    ctx: dict[str, Any] = {"workload": execution["workload"], "execution_id": str(execution["execution_id"])}
    for row in await job_store.results(conn, execution["execution_id"]):
        result = row["result"]
        ctx[row["step"]] = {**result, "result": result} if isinstance(result, dict) else {"result": result}
    return ctx


class Broker:
    """One execution's graph, walked inside the caller's transaction."""

    def __init__(self, conn: AsyncConnection, execution: dict[str, Any], document: dict[str, Any]) -> None:
        self.conn = conn
        self.execution = execution
        self.document = document
        self.workflow = playbook.Workflow(document)
        self.runtime = playbook.runtime(document)
        self.events: list[NewEvent] = []

    @classmethod
    async def load(cls, conn: AsyncConnection, execution: dict[str, Any]) -> Broker:
        return cls(conn, execution, await _document(conn, execution["catalog_id"]))

    async def enter(self, names: list[str], ctx: dict[str, Any]) -> None:
        """Run control steps in place and dispatch action steps as jobs."""
        todo, hops = list(names), 0
        while todo:
            hops += 1
            if hops > MAX_CONTROL_HOPS:
                raise ExecutionFailed(f"control steps looped more than {MAX_CONTROL_HOPS} times")
            step = self.workflow.steps[todo.pop(0)]
            if step.type is not None:
                await self._dispatch(step, ctx)
            elif not step.ends_branch:
                todo += self.following(step.name, ctx)

    def following(self, name: str, ctx: dict[str, Any]) -> list[str]:
        try:
            return self.workflow.following(name, ctx)
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
            runtime=self.runtime,
            dispatched_at=row["dispatched_at"],
        )
        self.events.append(
            NewEvent(
                type="job.dispatched",
                subject=subjects.job(self.runtime),
                entity={"domain": "job", "execution_id": str(execution_id), "job_id": job.job_id},
                payload=job.model_dump(mode="json"),
            )
        )

    def progress(self, finished: int) -> int:
        actions = sum(1 for s in self.workflow.steps.values() if s.type is not None) or 1
        return min(99, 100 * finished // actions)


async def start(conn: AsyncConnection, execution: dict[str, Any]) -> None:
    """Walk from `start`; an execution with no action step completes at once."""
    broker = await Broker.load(conn, execution)
    try:
        await broker.enter([playbook.START], await context(conn, execution))
    except ExecutionFailed as exc:
        await _fail(conn, execution, str(exc), broker.events)
        return
    await add_events(conn, broker.events)
    if await job_store.active_count(conn, execution["execution_id"]) == 0:
        await _complete(conn, execution, None)


async def apply_report(conn: AsyncConnection, report: StepReport) -> str:
    """Apply one report; returns what became of it (for the command's outcome)."""
    execution = await store.lock(conn, int(report.execution_id))
    if execution is None:
        return "unknown execution"
    if execution["status"] in store.TERMINAL:
        return f"ignored: execution is {execution['status']}"
    job = await job_store.lock(conn, int(report.job_id))
    if job is None or job["execution_id"] != execution["execution_id"]:
        return "unknown job"
    if job["status"] in ("completed", "failed", "abandoned"):
        return f"ignored: job is {job['status']}"
    if report.delivery < job["delivery"]:
        return "ignored: a report from an earlier delivery"
    who = {"step": report.step, "attempt": report.attempt, "worker": report.worker, "job_id": report.job_id}
    if report.kind == "started":
        await job_store.started(
            conn, job["job_id"], delivery=report.delivery, attempt=report.attempt, worker=report.worker
        )
        events = [execution_event(execution, "action_started", **who)]
        if job["status"] == "queued":
            dispatched = job["dispatched_at"].isoformat()
            events.insert(0, execution_event(execution, "step_started", dispatched_at=dispatched, **who))
        await add_events(conn, events)
        return "started"
    if report.kind == "attempt_failed":
        await add_events(conn, [execution_event(execution, "action_error", error=report.error, **who)])
        return "attempt failed"
    if report.kind == "failed":
        await job_store.finished(
            conn,
            job["job_id"],
            status="failed",
            attempt=report.attempt,
            worker=report.worker,
            result=report.result,
            error=report.error,
        )
        events = [
            execution_event(execution, "action_error", error=report.error, **who),
            execution_event(execution, "step_failed", error=report.error, **who),
        ]
        await _fail(conn, execution, f"step {report.step!r} failed: {report.error}", events)
        return "failed"
    await job_store.finished(
        conn,
        job["job_id"],
        status="completed",
        attempt=report.attempt,
        worker=report.worker,
        result=report.result,
        error=None,
    )
    events = [
        execution_event(execution, "action_completed", **who),
        execution_event(execution, "step_completed", result=report.result, **who),
    ]
    await _advance(conn, execution, report, events)
    return "completed"


async def _advance(
    conn: AsyncConnection, execution: dict[str, Any], report: StepReport, events: list[NewEvent]
) -> None:
    broker = await Broker.load(conn, execution)
    broker.events = events
    step = broker.workflow.steps.get(report.step)
    try:
        if step is not None and not step.ends_branch:
            ctx = await context(conn, execution)
            await broker.enter(broker.following(step.name, ctx), ctx)
    except ExecutionFailed as exc:
        await _fail(conn, execution, str(exc), broker.events)
        return
    await add_events(conn, broker.events)
    if await job_store.active_count(conn, execution["execution_id"]) == 0:
        await _complete(conn, execution, report.result)
    else:
        finished = len(await job_store.results(conn, execution["execution_id"]))
        await store.set_progress(conn, execution["execution_id"], broker.progress(finished))


async def _complete(conn: AsyncConnection, execution: dict[str, Any], result: Any) -> None:
    row = await store.finish(conn, execution["execution_id"], status="completed", result=result)
    if row is not None:
        await add_events(conn, [execution_event(row, "execution_complete", result=result)])


async def _fail(conn: AsyncConnection, execution: dict[str, Any], error: str, events: list[NewEvent]) -> None:
    await job_store.abandon_active(conn, execution["execution_id"])
    row = await store.finish(conn, execution["execution_id"], status="failed", error=error)
    events = [e for e in events if e.type != "job.dispatched"]
    if row is not None:
        events.append(execution_event(row, "execution_failed", error=error))
    await add_events(conn, events)
