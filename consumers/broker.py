"""The broker: it walks each execution's workflow and applies what comes back, as a state machine.

Entering a step makes a job. Control steps (start, end, routers) are done at once; action steps
wait for a worker pool of the playbook's runtime; an iterator's items are jobs of their own,
dispatched a bounded number at a time; a playbook step waits for the child execution it started.
What a job's end decides (the steps taken next, the execution's end) is written in the
transaction that applied it, and the jobs it dispatches reach the pools through the outbox.

A report is applied only while the execution and the job are live and it comes from the job's
current delivery: a terminal state is never overwritten and a dead attempt's late word ignored.
A step that more than one way leads into runs once for one fan-out (later arrivals join it) and
again when a loop leads back to it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection

from consumers.batch import Batch, Dispatch
from consumers.events import Ref, child_outcome, execution_event
from consumers.flow import Context, Plan
from consumers.loops import LoopRefused, items, loop_names
from noetl.contracts.execution import TERMINAL, EventStatus, ExecutionStatus
from noetl.contracts.jobs import ACTIVE, FINISHED, ChildFinished, JobKind, JobStatus, LoopItem, StepReport
from noetl.playbook.auth import AuthError, credential_names, secret_provider, secret_refs
from noetl.playbook.document import deep_merge
from noetl.playbook.steps import (
    CONTROL_TYPES,
    WORKER_TYPES,
    IteratorStep,
    Next,
    PlaybookStep,
    SaveStep,
    SecretsStep,
    Step,
    StepType,
)
from noetl.playbook.workflow import END
from noetl.settings import Settings
from noetl.store import catalog as catalog_store
from noetl.store import executions as store
from noetl.store import jobs as job_store
from noetl.store.jobs import ExecutionState, JobState, LoopState, NewJob, PendingItem
from noetl.store.outbox import NewEvent
from noetl.templates import RenderError, paths, prune, render


class ExecutionFailed(Exception):
    """The playbook cannot go on; the message names the step and says why."""


@dataclass(frozen=True, slots=True)
class EngineLimits:
    steps: int = 10_000
    items: int = 100_000
    nesting: int = 16

    @classmethod
    def of(cls, settings: Settings) -> EngineLimits:
        return cls(settings.limit_steps_per_execution, settings.limit_loop_items, settings.limit_playbook_nesting)


LIMITS = EngineLimits()


def configure(settings: Settings) -> None:
    global LIMITS
    LIMITS = EngineLimits.of(settings)


@dataclass(slots=True)
class Arrival:
    """A transition taken: into `step`, with its payload, because `cause` (a job) ended, as
    `event` said."""

    step: str
    payload: dict[str, Any] | None
    cause: NewJob | int | None
    event: NewEvent | int | None


KIND = {
    StepType.ITERATOR: JobKind.LOOP,
    StepType.PLAYBOOK: JobKind.PLAYBOOK,
    **{t: JobKind.CONTROL for t in CONTROL_TYPES},
    **{t: JobKind.ACTION for t in WORKER_TYPES},
}


def _now() -> datetime:
    return datetime.now(UTC)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 6)


class Broker:
    """One execution, inside the caller's transaction; its writes go to `batch`."""

    def __init__(self, batch: Batch, execution: ExecutionState, plan: Plan) -> None:
        self.batch = batch
        self.conn: AsyncConnection = batch.conn
        self.execution = execution
        self.plan = plan
        self.ref = Ref(execution.execution_id, execution.path, execution.version, execution.parent_execution_id)
        self.entered: dict[str, NewJob] = {}
        self.last_result: Any = None
        self.ended = False
        self._context: Context | None = None
        self._runs: dict[str, int] | None = None
        self._steps = execution.steps

    @classmethod
    async def of(cls, batch: Batch, execution: ExecutionState) -> Broker:
        return cls(batch, execution, await Plan.load(batch.conn, execution.catalog_id))

    async def context(self) -> Context:
        if self._context is None:
            self._context = await Context.load(self.conn, self.plan, self.execution.execution_id)
        return self._context

    def emit(self, event_type: str, status: EventStatus, **fields: Any) -> NewEvent:
        event = execution_event(self.ref, event_type, status, **fields)
        self.batch.events.append(event)
        return event

    # --------------------------------------------------------------------------- the walk

    async def begin(self, started: NewEvent) -> None:
        """A new execution: walk it from its first step."""
        await self.walk([Arrival(self.plan.workflow.first, None, None, started)])
        await self.settle()

    async def walk(self, arrivals: list[Arrival]) -> None:
        """Enter steps until what is left waits for a worker, a loop's items or a child; a
        problem fails the execution."""
        try:
            await self._walk(arrivals)
        except (ExecutionFailed, LoopRefused, AuthError) as exc:
            await self.fail(str(exc))

    async def _walk(self, arrivals: list[Arrival]) -> None:
        todo = deque(arrivals)
        while todo and not self.ended:
            arrival = todo.popleft()
            step = self.plan.step(arrival.step)
            if await self._joins(step, arrival):
                continue
            self._steps += 1
            if self._steps > LIMITS.steps:
                raise ExecutionFailed(
                    f"step {step.name!r}: the execution ran {LIMITS.steps} steps (a loop back that never ends?)"
                )
            started = self.emit(
                "step_started",
                EventStatus.RUNNING,
                step=step.name,
                node_type=step.type,
                parent=arrival.event,
                context={"input": arrival.payload} if arrival.payload else None,
            )
            job = self.batch.add_job(
                NewJob(
                    execution_id=self.execution.execution_id,
                    step=step.name,
                    kind=KIND[step.type],
                    status=JobStatus.QUEUED if step.worker else JobStatus.RUNNING,
                    node_type=step.type,
                    cause=arrival.cause,
                    start_event=started,
                )
            )
            self.entered[step.name] = job
            context = await self.context()
            names = await self._render_payload(step, arrival.payload, context)
            if step.type in CONTROL_TYPES:
                todo += self._control(step, job, started, context, names)
            elif isinstance(step, IteratorStep):
                todo += await self._loop(step, job, started, context, names)
            elif isinstance(step, PlaybookStep):
                await self._start_child(step, job, started, context.with_(**names))
            else:
                dispatch = self._dispatch(step, job, context, arrival.payload)
                job.credentials = self._credentials(step, context.with_(**names), dispatch.context)
                dispatch.credentials = tuple(job.credentials)
                self.batch.dispatches.append(dispatch)

    async def _joins(self, step: Step, arrival: Arrival) -> bool:
        """Whether `arrival` joins a run of `step` instead of starting one: the step was entered
        in this transaction, or its latest run did not lead to the arrival (a fan-in)."""
        if step.name in self.entered:
            return True
        if step.name not in self.plan.workflow.joins:
            return False
        if self._runs is None:
            self._runs = await job_store.latest_runs(
                self.conn, self.execution.execution_id, list(self.plan.workflow.joins)
            )
        latest = self._runs.get(step.name)
        cause = arrival.cause
        while isinstance(cause, NewJob):
            cause = cause.cause
        if latest is None or cause is None:
            return False
        return not await job_store.is_ancestor(self.conn, latest, cause)

    async def _render_payload(self, step: Step, payload: dict[str, Any] | None, context: Context) -> dict[str, Any]:
        """A transition's payload, rendered, for the steps the broker runs itself (a worker renders
        its own jobs' payloads)."""
        if not payload or step.worker:
            return {}
        return self._render(step, payload, context.values(), "the transition's data")

    @staticmethod
    def _render(step: Step, template: Any, names: dict[str, Any], what: str) -> Any:
        try:
            return render(template, names)
        except RenderError as exc:
            raise ExecutionFailed(f"step {step.name!r}: {what}: {exc}") from None

    def _control(
        self, step: Step, job: NewJob, started: NewEvent, context: Context, names: dict[str, Any]
    ) -> list[Arrival]:
        result = None if step.result is None else self._render(step, step.result, context.with_(**names), "`result`")
        job.status, job.result = JobStatus.COMPLETED, result
        done = self.emit(
            "step_completed", EventStatus.COMPLETED, step=step.name, node_type=step.type, result=result,
            duration=0.0, parent=started,
        )
        context.record(step.name, result)
        if result is not None:
            self.last_result = result
        return self._following(step, job, done, context, result)

    def _following(self, step: Step, job: NewJob | int, done: NewEvent | int, context: Context, result: Any) -> list[Arrival]:
        if step.name == END:
            return []
        try:
            chosen: list[Next] = self.plan.workflow.following(step, context.with_(result=result))
        except RenderError as exc:
            raise ExecutionFailed(f"step {step.name!r}: `when` {exc}") from None
        return [Arrival(n.step, n.payload, job, done) for n in chosen]

    def _credentials(self, step: Step, names: dict[str, Any], context: dict[str, Any] | None) -> list[str]:
        """The credentials its worker may fetch for `step`: those its `auth` (and its save's)
        names, a `secrets` step's own, and those behind secret references in its context."""
        found: set[str] = set()
        for auth in (step.auth, step.save.auth if step.save else None):
            if auth is not None:
                found |= credential_names(self._render(step, auth, names, "`auth`"))
        if isinstance(step, SecretsStep) and secret_provider(self._render(step, step.provider, names, "`provider`")) == "credential":
            found.add(str(self._render(step, step.secret_name, names, "`secret_name`")))
        if context:
            found |= {str(ref.get("key")) for ref in secret_refs(context) if ref.get("source") == "credential"}
        return sorted(found)

    def _job_context(self, step: Step, context: dict[str, Any], payload: dict[str, Any] | None) -> dict[str, Any]:
        """The part of the context a worker's job reads (all of it for python that asks)."""
        wanted = self.plan.paths(step)
        if wanted is None:
            return context
        if payload:
            wanted |= paths(payload)
        return prune(context, wanted)

    def _dispatch(self, step: Step, job: NewJob | PendingItem, context: Context, payload: dict[str, Any] | None) -> Dispatch:
        return Dispatch(
            job=job,
            execution_id=self.execution.execution_id,
            step=step.name,
            task=self.plan.task(step),
            context=self._job_context(step, context.values(), payload),
            runtime=self.plan.runtime,
            payload=payload,
            credentials=tuple(job.credentials) if isinstance(job, NewJob) else (),
        )

    # --------------------------------------------------------------------------- loops

    async def _loop(
        self, step: IteratorStep, job: NewJob, started: NewEvent, context: Context, names: dict[str, Any]
    ) -> list[Arrival]:
        """Enter an iterator: its items become pending jobs, and the first ones are dispatched."""
        scope = context.with_(**names)
        try:
            values = items(step, scope, LIMITS.items)
        except RenderError as exc:
            raise ExecutionFailed(f"step {step.name!r}: {exc}") from None
        except LoopRefused as exc:
            raise ExecutionFailed(f"step {step.name!r}: {exc}") from None
        if not values:
            return await self._loop_finished(step, job, [], started, context)
        task = step.item
        job.total = len(values)
        job.context = self._job_context(task, scope, None) if task.worker else None
        rows = []
        for index, value in enumerate(values):
            bound = {**scope, **loop_names(step, index, value, len(values))} if task.auth or (task.save and task.save.auth) else scope
            row = self.batch.add_job(
                NewJob(
                    execution_id=self.execution.execution_id,
                    step=step.name,
                    kind=KIND[task.type],
                    status=JobStatus.PENDING,
                    node_type=task.type,
                    cause=job,
                    start_event=started,
                    loop=job,
                    idx=index,
                    item=value,
                    credentials=self._credentials(task, bound, job.context) if task.worker else [],
                )
            )
            rows.append(row)
        first = rows[: step.in_flight]
        for row in first:
            row.status = JobStatus.QUEUED if task.worker else JobStatus.RUNNING
        await self._dispatch_items(step, job, [(row, row.idx or 0, row.item) for row in first], job.total, job.context, started)
        return []

    async def _dispatch_items(
        self,
        step: IteratorStep,
        loop: NewJob | LoopState,
        chosen: list[tuple[NewJob | PendingItem, int, Any]],
        count: int,
        context: dict[str, Any] | None,
        loop_event: NewEvent | int | None,
    ) -> None:
        task = step.item
        for row, index, value in chosen:
            self.emit(
                "loop_iteration", EventStatus.RUNNING, step=step.name, node_type=StepType.ITERATOR,
                index=index, item=value, parent=loop_event,
            )
            if isinstance(task, PlaybookStep):
                names = {**(await self.context()).values(), **loop_names(step, index, value, count)}
                await self._start_child(task, row, loop_event, names)
                continue
            self.batch.dispatches.append(
                Dispatch(
                    job=row,
                    execution_id=self.execution.execution_id,
                    step=step.name,
                    task=self.plan.task(task),
                    context=context or {},
                    runtime=self.plan.runtime,
                    loop=LoopItem(
                        step=step.name, element=step.element, index=index, item=value, count=count,
                        chunked=step.chunk is not None, enumerate=step.enumerate,
                    ),
                    credentials=tuple(row.credentials),
                )
            )

    async def _item_finished(self, job: JobState, result: Any) -> None:
        """A loop item's end: dispatch the next one, or finish the loop when it was the last."""
        assert job.loop_job_id is not None
        step = self.plan.step(job.step)
        assert isinstance(step, IteratorStep)
        if job.idx is None:  # the loop's own save, after its items: the loop is done
            loop = await job_store.item_done(self.conn, job.loop_job_id, 0)
            await self._loop_finished(step, loop, await job_store.item_results(self.conn, loop.job_id), loop.start_event_id, None)
            return
        loop = await job_store.item_done(self.conn, job.loop_job_id)
        if loop.done < loop.total:
            following = await job_store.dispatch_items(self.conn, loop.job_id, 1)
            chosen = [(row, row.idx, row.item) for row in following]
            await self._dispatch_items(step, loop, chosen, loop.total, loop.context, loop.start_event_id)
            return
        results = await job_store.item_results(self.conn, loop.job_id)
        if step.save is None:
            await self._loop_finished(step, loop, results, loop.start_event_id, None)
            return
        # The loop's own save runs on a worker, over the aggregated results.
        save = SaveStep(name=step.name, type=StepType.SAVE, save=step.save, auth=step.auth)
        row = self.batch.add_job(
            NewJob(
                execution_id=self.execution.execution_id, step=step.name, kind=JobKind.ACTION,
                status=JobStatus.QUEUED, node_type=StepType.SAVE, cause=loop.job_id,
                start_event=None, loop=loop.job_id,
            )
        )
        dispatch = self._dispatch(save, row, await self.context(), None)
        dispatch.context = {**dispatch.context, "result": results}
        row.credentials = self._credentials(save, (await self.context()).values(), dispatch.context)
        dispatch.credentials = tuple(row.credentials)
        self.batch.dispatches.append(dispatch)

    async def _loop_finished(
        self,
        step: IteratorStep,
        loop: NewJob | LoopState,
        results: list[Any],
        started: NewEvent | int | None,
        context: Context | None,
    ) -> list[Arrival]:
        """Every item done: the loop's result is their results in item order."""
        context = context or await self.context()
        if isinstance(loop, NewJob):
            loop.status, loop.result, job_ref = JobStatus.COMPLETED, results, loop
        else:
            await job_store.finished(self.conn, loop.job_id, JobStatus.COMPLETED, result=results)
            job_ref = loop.job_id
        self.emit(
            "loop_completed", EventStatus.COMPLETED, step=step.name, node_type=StepType.ITERATOR,
            result=results, context={"count": len(results)}, parent=started,
        )
        done = self.emit(
            "step_completed", EventStatus.COMPLETED, step=step.name, node_type=StepType.ITERATOR, result=results,
            duration=_seconds(loop.started_at, _now()) if isinstance(loop, LoopState) else 0.0, parent=started,
        )
        context.record(step.name, results)
        self.last_result = results
        arrivals = self._following(step, job_ref, done, context, results)
        if isinstance(loop, LoopState):  # not inside a walk: go on from here
            await self.walk(arrivals)
            await self.settle()
            return []
        return arrivals

    # --------------------------------------------------------------------------- sub-playbooks

    async def _start_child(
        self, step: PlaybookStep, job: NewJob | PendingItem, started: NewEvent | int | None, names: dict[str, Any]
    ) -> None:
        """Start the child execution that `job` waits for, in this transaction."""
        if self.execution.depth + 1 > LIMITS.nesting:
            raise ExecutionFailed(f"step {step.name!r}: sub-playbooks nest deeper than {LIMITS.nesting} levels")
        version = None if step.version == "latest" else int(step.version)
        entry = await catalog_store.by_path(self.conn, step.path, version)
        if entry is None:
            raise ExecutionFailed(
                f"step {step.name!r}: the playbook {step.path!r} (version {step.version}) is not in the catalog"
            )
        parameters = self._render(step, step.input, names, "`data`")
        if not isinstance(parameters, dict):
            raise ExecutionFailed(f"step {step.name!r}: its data must render to a mapping, not {parameters!r:.80}")
        parent_event = await self.batch.event_id(started)
        row = (
            await store.add(
                self.conn,
                [
                    {
                        "catalog_id": entry["catalog_id"],
                        "path": entry["path"],
                        "version": entry["version"],
                        "type": "playbook",
                        "status": ExecutionStatus.RUNNING,
                        "workload": deep_merge(entry["payload"].get("workload") or {}, parameters),
                        "parameters": parameters,
                        "merge": True,
                        "parent_execution_id": str(self.execution.execution_id),
                        "parent_event_id": None if parent_event is None else str(parent_event),
                        "parent_step": step.name,
                        "metadata": None,
                        "depth": self.execution.depth + 1,
                    }
                ],
            )
        )[0]
        if isinstance(job, NewJob):
            job.child_execution_id = row["execution_id"]
        else:
            await job_store.waits_for(self.conn, job.job_id, row["execution_id"])
        child = Broker(
            self.batch,
            ExecutionState(
                execution_id=row["execution_id"], catalog_id=entry["catalog_id"], path=entry["path"],
                version=entry["version"], status=ExecutionStatus.RUNNING,
                parent_execution_id=str(self.execution.execution_id), steps=0, depth=self.execution.depth + 1,
            ),
            Plan.of(entry["catalog_id"], entry["payload"]),
        )
        first = child.emit(
            "execution_start", EventStatus.STARTED, context={"path": entry["path"], "version": entry["version"], "workload": row["workload"]},
            parent=parent_event, catalog_id=str(entry["catalog_id"]), parent_step=step.name,
        )
        await child.begin(first)

    # --------------------------------------------------------------------------- reports

    async def apply(self, job: JobState, report: StepReport) -> None:
        """A worker's report about one of this execution's jobs (already checked to be current)."""
        item = job.loop_job_id is not None and job.idx is not None
        about = {
            "step": job.step,
            "node_type": job.node_type,
            "index": job.idx if item else None,
            "item": job.item if item else None,
            "worker": report.worker,
            "parent": job.start_event_id,
            "attempt": report.attempt,
            "delivery": report.delivery,
            "job_id": str(job.job_id),
        }
        ran = report.kind != "exhausted"
        # An attempt that ended before its worker reported its start carries the start here.
        if ran and (job.delivery, job.attempt) < (report.delivery, report.attempt):
            if report.kind in ("started", "attempt_failed"):
                await job_store.started(self.conn, job.job_id, report)
            self.emit("action_started", EventStatus.RUNNING, time=report.started_at, context={"input": report.input}, **about)
        ended = {"time": report.ended_at, "duration": report.duration}
        if report.kind == "attempt_failed":
            self.emit("action_error", EventStatus.FAILED, error=report.error, **ended, **about)
        elif report.kind in ("failed", "exhausted"):
            await job_store.finished(self.conn, job.job_id, JobStatus.FAILED, error=report.error, report=report)
            if ran:
                self.emit("action_error", EventStatus.FAILED, error=report.error, **ended, **about)
            await self.job_failed(job, report.error or "failed", report.ended_at, worker=report.worker, attempt=report.attempt)
        elif report.kind == "completed":
            await job_store.finished(self.conn, job.job_id, JobStatus.COMPLETED, result=report.result, report=report)
            self.emit("action_completed", EventStatus.COMPLETED, result=report.result, saved=report.saved, **ended, **about)
            await self.job_completed(job, report.result, report.ended_at, worker=report.worker, attempt=report.attempt)

    async def child_done(self, job: JobState, outcome: ChildFinished) -> None:
        """The child execution `job` waited for has ended."""
        item = job.idx is not None
        about = {"step": job.step, "node_type": job.node_type, "index": job.idx, "item": job.item if item else None,
                 "parent": job.start_event_id, "job_id": str(job.job_id), "child_execution_id": outcome.child_execution_id}
        if outcome.status != ExecutionStatus.COMPLETED:
            error = f"the child execution {outcome.child_execution_id} {outcome.status}: {outcome.error or 'no reason given'}"
            await job_store.finished(self.conn, job.job_id, JobStatus.FAILED, error=error)
            if item:
                self.emit("action_error", EventStatus.FAILED, error=error, **about)
            await self.job_failed(job, error, None)
            return
        result = await self._child_result(job, outcome)
        await job_store.finished(self.conn, job.job_id, JobStatus.COMPLETED, result=result)
        if item:
            self.emit("action_completed", EventStatus.COMPLETED, result=result, **about)
        await self.job_completed(job, result, None)

    async def _child_result(self, job: JobState, outcome: ChildFinished) -> Any:
        step = self.plan.worker_step(self.plan.step(job.step))
        if isinstance(step, PlaybookStep) and step.return_step:
            for found in await job_store.latest_results(self.conn, int(outcome.child_execution_id)):
                if found.step == step.return_step:
                    return found.result
        return outcome.result

    async def job_completed(self, job: JobState, result: Any, at: datetime | None, **who: Any) -> None:
        """`who`: the worker and attempt that ran it, for its event."""
        if job.loop_job_id is not None:
            await self._item_finished(job, result)
            return
        step = self.plan.step(job.step)
        at = at or _now()
        done = self.emit(
            "step_completed", EventStatus.COMPLETED, step=step.name, node_type=step.type, result=result,
            duration=_seconds(job.started_at or job.dispatched_at, at), time=at, parent=job.start_event_id, **who,
        )
        context = await self.context()
        context.record(step.name, result)
        self.last_result = result
        try:
            arrivals = self._following(step, job.job_id, done, context, result)
        except ExecutionFailed as exc:
            await self.fail(str(exc))
            return
        await self.walk(arrivals)
        await self.settle()

    async def job_failed(self, job: JobState, error: str, at: datetime | None, **who: Any) -> None:
        """A job failed after its attempts: its step fails, and so does the execution."""
        if job.loop_job_id is not None and job.idx is not None:
            error = f"item {job.idx} failed: {error}"
        step = self.plan.step(job.step)
        self.emit("step_failed", EventStatus.FAILED, step=step.name, node_type=step.type, error=error,
                  time=at, parent=job.start_event_id, **who)
        await self.fail(f"step {step.name!r} failed: {error}")

    # --------------------------------------------------------------------------- endings

    async def settle(self) -> None:
        """Complete the execution once no job of it is live; otherwise record its progress."""
        if self.ended:
            return
        execution_id = self.execution.execution_id
        progress = await job_store.progress(self.conn, execution_id)
        waiting = sum(1 for j in self.batch.jobs if j.execution_id == execution_id and j.loop is None and j.status in ACTIVE)
        if progress.active + waiting:
            self.batch.progress[execution_id] = min(99, 100 * progress.completed // max(1, self.plan.workflow.actions))
            return
        result = await self._final_result()
        row = await store.finish(self.conn, execution_id, status=ExecutionStatus.COMPLETED, result=result)
        if row is not None:
            self.ended = True
            self.emit("execution_complete", EventStatus.COMPLETED, result=result,
                      duration=_seconds(row["start_time"], row["end_time"]))
            self._tell_parent(ExecutionStatus.COMPLETED, result=result)

    async def _final_result(self) -> Any:
        """The `end` step's result when it has one (a save step's: what it saved), else the
        result of the step that finished last."""
        end = self.plan.workflow.steps.get(END)
        results = (await self.context()).results
        if end is not None and results.get(END) is not None:
            result = results[END]
            if isinstance(end, SaveStep) and isinstance(result, dict) and "data" in result:
                return result["data"]
            return result
        return self.last_result

    async def fail(self, error: str) -> None:
        await self._stop(ExecutionStatus.FAILED, error)

    async def cancel(self, reason: str | None) -> bool:
        """Cancel the execution and its children; False when it had already ended."""
        return await self._stop(ExecutionStatus.CANCELLED, reason)

    async def _stop(self, status: ExecutionStatus, error: str | None) -> bool:
        """End the execution early: its live jobs are abandoned, its unwritten ones never
        dispatched, and its children cancelled."""
        if self.ended:
            return False
        execution_id = self.execution.execution_id
        children = await job_store.abandon_active(self.conn, execution_id)
        for job in self.batch.jobs:
            if job.execution_id == execution_id and job.status in (*ACTIVE, JobStatus.PENDING):
                job.status = JobStatus.ABANDONED
                if job.child_execution_id:
                    children.append(job.child_execution_id)
        self.batch.dispatches = [d for d in self.batch.dispatches if d.execution_id != execution_id]
        if status == ExecutionStatus.CANCELLED:
            row = await store.cancel(self.conn, execution_id)
        else:
            row = await store.finish(self.conn, execution_id, status=status, error=error)
        if row is None:
            return False
        self.ended = True
        if status == ExecutionStatus.CANCELLED:
            self.emit("execution_cancelled", EventStatus.CANCELLED, context={"reason": error}, reason=error)
        else:
            self.emit("execution_failed", EventStatus.FAILED, error=error)
        why = f"its parent execution {execution_id} {status}"
        for child in children:
            self.batch.cancel_child(child, why)
        self._tell_parent(status, error=error)
        return True

    def _tell_parent(self, status: ExecutionStatus, *, result: Any = None, error: str | None = None) -> None:
        parent = self.execution.parent_execution_id
        if parent and parent.isdigit():
            outcome = ChildFinished(
                child_execution_id=str(self.execution.execution_id), parent_execution_id=parent,
                status=status, result=result, error=error,
            )
            self.batch.events.append(child_outcome(outcome))


# ------------------------------------------------------------------------------- entry points


async def start(conn: AsyncConnection, started: list[tuple[ExecutionState, dict[str, Any], NewEvent]]) -> None:
    """Walk new executions from their first step in the transaction that created them; each comes
    as (execution, playbook document, its first event)."""
    batch = Batch(conn)
    for execution, document, first in started:
        batch.events.append(first)
        await Broker(batch, execution, Plan.of(execution.catalog_id, document)).begin(first)
    await batch.flush()


async def apply_report(conn: AsyncConnection, report: StepReport) -> str:
    """Apply one report; returns what became of it (for the command's outcome)."""
    locked = await job_store.lock(conn, int(report.job_id), int(report.execution_id))
    if locked is None:
        return "unknown job"
    job, execution = locked
    if execution.status in TERMINAL:
        return f"ignored: execution is {execution.status}"
    if job.status in FINISHED:
        return f"ignored: job is {job.status}"
    if report.delivery < job.delivery:
        return "ignored: a report from an earlier delivery"
    batch = Batch(conn)
    await (await Broker.of(batch, execution)).apply(job, report)
    await batch.flush()
    return report.kind


async def child_finished(conn: AsyncConnection, outcome: ChildFinished) -> str:
    """A child execution ended: the step (or loop item) waiting for it goes on."""
    locked = await job_store.lock_waiting(conn, int(outcome.child_execution_id), int(outcome.parent_execution_id))
    if locked is None:
        return "ignored: no step waits for this execution"
    job, execution = locked
    if execution.status in TERMINAL or job.status in FINISHED:
        return "ignored: the step no longer waits"
    batch = Batch(conn)
    await (await Broker.of(batch, execution)).child_done(job, outcome)
    await batch.flush()
    return "applied"


async def cancel(conn: AsyncConnection, execution_id: int, reason: str | None) -> bool:
    """Cancel a live execution (and its children); False when there is none to cancel."""
    execution = await job_store.lock_execution(conn, execution_id)
    if execution is None or execution.status in TERMINAL:
        return False
    batch = Batch(conn)
    cancelled = await (await Broker.of(batch, execution)).cancel(reason)
    await batch.flush()
    return cancelled
