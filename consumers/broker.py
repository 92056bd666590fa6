"""The broker: it walks each execution's workflow and applies what comes back, as a state machine.

Entering a step makes a job. Control steps (start, end, routers) are done at once; action steps
wait for a worker pool of the playbook's runtime; an iterator's items are jobs of their own
(`consumers.loops`); a playbook step waits for the child execution it started
(`consumers.children`). A job's end takes the transitions its step chooses; the execution
completes when none of its jobs is live. Everything is written in the transaction of the command
that caused it (`consumers.batch`), and jobs reach the pools through the outbox.

A report is applied only while the execution and the job are live and it comes from the job's
current delivery: a terminal state is never overwritten and a dead attempt's late word ignored.
A step that more than one way leads into runs once for one fan-out (later arrivals join it) and
again when a loop leads back to it: an arrival joins the step's latest run unless that run led
to it.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from typing import Any

from consumers import engine, work
from consumers.batch import Batch, Dispatch
from consumers.children import Children
from consumers.engine import KIND, Arrival, ExecutionFailed, limits, now, seconds_between
from consumers.events import Ref, child_outcome, execution_event
from consumers.flow import Context, Plan
from consumers.loops import Loops
from noetl.contracts.execution import TERMINAL, EventStatus, ExecutionStatus
from noetl.contracts.jobs import ACTIVE, FINISHED, ChildFinished, JobStatus, LoopItems, StepReport
from noetl.playbook.document import PlaybookError
from noetl.playbook.steps import CONTROL_TYPES, Next, SaveStep, Step, StepType
from noetl.playbook.workflow import END
from noetl.store import executions as store
from noetl.store import jobs as job_store
from noetl.store.jobs import ExecutionState, JobState, JobUpdate, NewJob, PendingItem
from noetl.store.outbox import NewEvent
from noetl.templates import RenderError, render


class Broker:
    """One execution in one batch; its writes go to the batch, its counts to its row."""

    def __init__(self, batch: Batch, execution: ExecutionState, plan: Plan) -> None:
        self.batch = batch
        self.conn = batch.conn
        self.execution = execution
        self.plan = plan
        self.ref = Ref(
            execution.execution_id, execution.path, execution.version, execution.parent_execution_id
        )
        self.steps, self.active, self.done = execution.steps, execution.active, execution.done
        self.ended = execution.status in TERMINAL
        self.entered: dict[str, NewJob] = {}
        self.last_result: Any = None
        self.loops = Loops(self)
        self.children = Children(self)
        self._context: Context | None = None
        self._runs: dict[str, int] | None = None

    @classmethod
    async def of(cls, execution: ExecutionState, document: dict[str, Any] | None = None) -> Broker:
        """The current batch's broker of `execution`, made the first time it is asked for."""
        batch = Batch.current()
        broker = batch.brokers.get(execution.execution_id)
        if broker is None:
            plan = await Plan.get(batch.conn, execution.catalog_id, document)
            broker = batch.brokers[execution.execution_id] = cls(batch, execution, plan)
        return broker

    @property
    def execution_id(self) -> int:
        return self.execution.execution_id

    def counts(self) -> dict[str, Any]:
        progress = 100 if self.ended else min(99, 100 * self.done // max(1, self.plan.workflow.actions))
        return {
            "execution_id": self.execution_id,
            "steps": self.steps,
            "active": self.active,
            "done": self.done,
            "progress": None if self.ended else progress,
        }

    async def context(self) -> Context:
        if self._context is None:
            self._context = await Context.load(self.conn, self.plan, self.execution_id)
        return self._context

    def knows(self, workload: dict[str, Any], results: dict[str, Any]) -> None:
        """The context, when the caller has it already (a new execution's, or one read with
        others in one query)."""
        if self._context is None:
            self._context = Context.of(self.plan, self.execution_id, workload, results)

    def emit(self, event_type: str, status: EventStatus, **fields: Any) -> NewEvent:
        event = execution_event(self.ref, event_type, status, **fields)
        self.batch.events.append(event)
        return event

    # --------------------------------------------------------------------------- the walk

    async def begin(self, started: NewEvent) -> None:
        """A new execution: walk it from its first step."""
        await self.walk([Arrival(self.plan.workflow.first, None, None, started)])

    async def walk(self, arrivals: list[Arrival]) -> None:
        """Enter steps until what is left waits for a worker, a loop's items or a child, then see
        whether the execution is done; a problem fails it."""
        try:
            await self._walk(arrivals)
        except ExecutionFailed as exc:
            await self.fail(str(exc))
        await self.settle()

    async def _walk(self, arrivals: list[Arrival]) -> None:
        todo = deque(arrivals)
        while todo and not self.ended:
            arrival = todo.popleft()
            step = self.plan.step(arrival.step)
            if await self._joins(step, arrival):
                continue
            self.steps += 1
            if self.steps > limits().steps:
                raise ExecutionFailed(
                    f"step {step.name!r}: the execution ran {limits().steps} steps "
                    "(a loop back that never ends?)"
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
                    execution_id=self.execution_id,
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
            names = context.with_(**self._render_payload(step, arrival.payload, context))
            if step.type in CONTROL_TYPES:
                todo += self._control(step, job, started, context, names)
                continue
            self.active += 1
            if step.type == StepType.ITERATOR:
                todo += await self.loops.enter(step, job, started, context, names)
            elif step.type == StepType.PLAYBOOK:
                await self.children.start(step, job, started, names)
            else:
                job_context = self.job_context(step, context.values(), arrival.payload)
                job.credentials = self.credentials(step, names, job_context)
                self.dispatch(step, job, job_context, payload=arrival.payload)

    async def _joins(self, step: Step, arrival: Arrival) -> bool:
        """Whether `arrival` joins a run of `step` instead of starting one: the step was entered
        in this batch, or its latest run did not lead to the arrival (a fan-in)."""
        if step.name in self.entered:
            return True
        if step.name not in self.plan.workflow.joins:
            return False
        if self._runs is None:
            self._runs = await job_store.latest_runs(
                self.conn, self.execution_id, list(self.plan.workflow.joins)
            )
        latest = self._runs.get(step.name)
        cause = arrival.cause
        while isinstance(cause, NewJob):
            cause = cause.cause
        if latest is None or cause is None:
            return False
        return not await job_store.is_ancestor(self.conn, latest, cause)

    def _render_payload(self, step: Step, payload: dict[str, Any] | None, context: Context) -> dict[str, Any]:
        """A transition's payload, rendered, for the steps the broker runs itself (a worker renders
        its own jobs' payloads)."""
        if not payload or step.worker:
            return {}
        return self.render(step, payload, context.values(), "the transition's data")

    @staticmethod
    def render(step: Step, template: Any, names: dict[str, Any], what: str) -> Any:
        try:
            return render(template, names)
        except RenderError as exc:
            raise ExecutionFailed(f"step {step.name!r}: {what}: {exc}") from None

    def _control(
        self, step: Step, job: NewJob, started: NewEvent, context: Context, names: dict[str, Any]
    ) -> list[Arrival]:
        result = None if step.result is None else self.render(step, step.result, names, "`result`")
        job.status, job.result = JobStatus.COMPLETED, result
        done = self.emit(
            "step_completed",
            EventStatus.COMPLETED,
            step=step.name,
            node_type=step.type,
            result=result,
            duration=0.0,
            parent=started,
        )
        context.record(step.name, result)
        if result is not None:
            self.last_result = result
        return self.following(step, job, done, context, result)

    def following(
        self, step: Step, job: NewJob | int, done: NewEvent | int, context: Context, result: Any
    ) -> list[Arrival]:
        """The arrivals `step`'s transitions choose once it ended with `result`."""
        if step.name == END:
            return []
        try:
            chosen: list[Next] = self.plan.workflow.following(step, context.with_(result=result))
        except RenderError as exc:
            raise ExecutionFailed(f"step {step.name!r}: `when` {exc}") from None
        return [Arrival(n.step, n.payload, job, done) for n in chosen]

    def job_context(
        self, step: Step, values: dict[str, Any], payload: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return work.context_for(self.plan, step, values, payload)

    def credentials(self, step: Step, names: dict[str, Any], context: dict[str, Any] | None) -> list[str]:
        return work.credentials_for(
            step, lambda template, what: self.render(step, template, names, what), context
        )

    def dispatch(
        self,
        step: Step,
        job: NewJob | PendingItem,
        context: dict[str, Any],
        *,
        payload: dict[str, Any] | None = None,
        loop: LoopItems | None = None,
    ) -> None:
        """A job for the worker pools: the step, its context, and the credentials it may fetch."""
        self.batch.dispatches.append(
            Dispatch(
                job=job,
                execution_id=self.execution_id,
                step=step.name,
                task=self.plan.task(step),
                context=context,
                runtime=self.plan.runtime,
                payload=payload,
                loop=loop,
                credentials=tuple(job.credentials),
            )
        )

    # --------------------------------------------------------------------------- what comes back

    async def report(self, job: JobState, report: StepReport) -> str:
        """A worker's report about one of this execution's jobs; what became of it."""
        if self.ended:
            return "ignored: the execution has ended"
        if job.status in FINISHED:
            return f"ignored: job is {job.status}"
        if report.delivery < job.delivery:
            return "ignored: a report from an earlier delivery"
        if job.loop_job_id is not None and job.idx is not None:
            return await self.loops.report(job, report)
        about = {
            "step": job.step,
            "node_type": job.node_type,
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
                self.batch.update(job, JobUpdate.of(job.job_id, JobStatus.RUNNING, report))
            self.emit(
                "action_started",
                EventStatus.RUNNING,
                time=report.started_at,
                context={"input": report.input},
                **about,
            )
        ended = {"time": report.ended_at, "duration": report.duration}
        who = {"worker": report.worker, "attempt": report.attempt}
        if report.kind == "attempt_failed":
            self.emit("action_error", EventStatus.FAILED, error=report.error, **ended, **about)
        elif report.kind in ("failed", "exhausted"):
            self.batch.update(job, JobUpdate.of(job.job_id, JobStatus.FAILED, report, error=report.error))
            if ran:
                self.emit("action_error", EventStatus.FAILED, error=report.error, **ended, **about)
            await self.job_failed(job, report.error or "failed", report.ended_at, **who)
        elif report.kind == "completed":
            self.batch.update(
                job, JobUpdate.of(job.job_id, JobStatus.COMPLETED, report, result=report.result)
            )
            self.emit(
                "action_completed",
                EventStatus.COMPLETED,
                result=report.result,
                saved=report.saved,
                context={"input": report.input},
                **ended,
                **about,
            )
            await self.job_completed(job, report.result, report.ended_at, **who)
        return report.kind

    async def child_done(self, job: JobState, outcome: ChildFinished) -> str:
        """The child execution `job` waited for has ended."""
        if self.ended or job.status in FINISHED:
            return "ignored: the step no longer waits"
        await self.children.done(job, outcome)
        return "applied"

    async def job_completed(self, job: JobState, result: Any, at: datetime | None, **who: Any) -> None:
        """`who`: the worker and attempt that ran it, for its event."""
        if job.loop_job_id is not None:
            self.loops.job_finished(job)
            return
        self.top_finished(completed=True)
        step = self.plan.step(job.step)
        at = at or now()
        done = self.emit(
            "step_completed",
            EventStatus.COMPLETED,
            step=step.name,
            node_type=step.type,
            result=result,
            duration=seconds_between(job.started_at or job.dispatched_at, at),
            time=at,
            parent=job.start_event_id,
            **who,
        )
        context = await self.context()
        context.record(step.name, result)
        self.last_result = result
        try:
            arrivals = self.following(step, job.job_id, done, context, result)
        except ExecutionFailed as exc:
            await self.fail(str(exc))
            return
        await self.walk(arrivals)

    async def job_failed(self, job: JobState, error: str, at: datetime | None, **who: Any) -> None:
        """A job failed after its attempts: its step fails, and so does the execution."""
        step = self.plan.step(job.step)
        self.emit(
            "step_failed",
            EventStatus.FAILED,
            step=step.name,
            node_type=step.type,
            error=error,
            time=at,
            parent=job.start_event_id,
            **who,
        )
        await self.fail(f"step {step.name!r} failed: {error}")

    def top_finished(self, *, completed: bool) -> None:
        """One of the execution's top-level live jobs (not a loop's item) has ended."""
        self.active -= 1
        self.done += completed

    async def finish(self) -> None:
        """Before the batch is written: what was held back for the whole batch (loop items)."""
        if not self.ended:
            await self.loops.finish()

    # --------------------------------------------------------------------------- endings

    async def settle(self) -> None:
        """Complete the execution once none of its jobs is live."""
        if self.ended or self.active > 0:
            return
        result = await self._final_result()
        row = await store.finish(
            self.conn, self.execution_id, status=ExecutionStatus.COMPLETED, result=result
        )
        if row is not None:
            self.ended = True
            self.emit(
                "execution_complete",
                EventStatus.COMPLETED,
                result=result,
                duration=seconds_between(row["start_time"], row["end_time"]),
            )
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
        children = await job_store.abandon_active(self.conn, self.execution_id)
        for job in self.batch.jobs:
            if job.execution_id == self.execution_id and job.status in (*ACTIVE, JobStatus.PENDING):
                job.status = JobStatus.ABANDONED
                if job.child_execution_id:
                    children.append(job.child_execution_id)
        self.batch.dispatches = [d for d in self.batch.dispatches if d.execution_id != self.execution_id]
        if status == ExecutionStatus.CANCELLED:
            row = await store.cancel(self.conn, self.execution_id)
        else:
            row = await store.finish(self.conn, self.execution_id, status=status, error=error)
        if row is None:
            return False
        self.ended, self.active = True, 0
        if status == ExecutionStatus.CANCELLED:
            self.emit("execution_cancelled", EventStatus.CANCELLED, context={"reason": error}, reason=error)
        else:
            self.emit("execution_failed", EventStatus.FAILED, error=error)
        for child in children:
            self.batch.cancel_child(child, f"its parent execution {self.execution_id} {status}")
        self._tell_parent(status, error=error)
        return True

    def _tell_parent(self, status: ExecutionStatus, *, result: Any = None, error: str | None = None) -> None:
        parent = self.execution.parent_execution_id
        if parent and parent.isdigit():
            outcome = ChildFinished(
                child_execution_id=str(self.execution_id),
                parent_execution_id=parent,
                status=status,
                result=result,
                error=error,
            )
            self.batch.events.append(child_outcome(outcome))


# ------------------------------------------------------------------------------- entry points
# Each runs inside `consumers.batch.batch(conn)`: the batch writes what they decided at its end.


configure = engine.configure


async def start(started: list[tuple[ExecutionState, dict[str, Any], NewEvent]]) -> None:
    """Walk new executions from their first step; each comes as (execution, playbook document,
    its first event)."""
    batch = Batch.current()
    for execution, document, first in started:
        batch.events.append(first)
        try:
            broker = await Broker.of(execution, document)
        except PlaybookError as exc:  # registered before the checks of today, say
            await _cannot_run(execution, first, f"the playbook cannot run: {exc}")
            continue
        broker.knows(first.payload["context"]["workload"], {})
        await broker.begin(first)


async def _cannot_run(execution: ExecutionState, first: NewEvent, error: str) -> None:
    batch = Batch.current()
    if await store.finish(batch.conn, execution.execution_id, status=ExecutionStatus.FAILED, error=error):
        ref = Ref(execution.execution_id, execution.path, execution.version, execution.parent_execution_id)
        batch.events.append(
            execution_event(ref, "execution_failed", EventStatus.FAILED, error=error, parent=first)
        )


async def apply_reports(reports: list[StepReport]) -> list[str]:
    """Apply workers' reports, in order; what became of each."""
    conn = Batch.current().conn
    executions = await job_store.lock_executions(conn, [int(r.execution_id) for r in reports])
    jobs = await job_store.lock_jobs(conn, [int(r.job_id) for r in reports])
    # The contexts the completions will need, read together (a loop item's completion needs none:
    # the loop reads its context once, when its last item ends).
    needing = {
        int(r.execution_id)
        for r in reports
        if r.kind == "completed" and (job := jobs.get(int(r.job_id))) and job.loop_job_id is None
    }
    completing = [e for e in executions if e in needing]
    for execution_id, (workload, results) in (await job_store.contexts(conn, completing)).items():
        (await Broker.of(executions[execution_id])).knows(workload, results)
    outcomes = []
    for report in reports:
        job_id = int(report.job_id)
        # A job reported on earlier in this batch: as the batch has left it.
        job = Batch.current().seen.get(job_id, jobs.get(job_id))
        execution = executions.get(int(report.execution_id))
        if job is None or execution is None or job.execution_id != execution.execution_id:
            outcomes.append("unknown job")
            continue
        outcomes.append(await (await Broker.of(execution)).report(job, report))
    return outcomes


async def child_finished(outcome: ChildFinished) -> str:
    """A child execution ended: the step (or loop item) waiting for it goes on."""
    conn = Batch.current().conn
    executions = await job_store.lock_executions(conn, [int(outcome.parent_execution_id)])
    waiting = await job_store.lock_waiting(conn, [int(outcome.child_execution_id)])
    job = waiting.get(int(outcome.child_execution_id))
    execution = executions.get(int(outcome.parent_execution_id))
    if job is None or execution is None or job.execution_id != execution.execution_id:
        return "ignored: no step waits for this execution"
    return await (await Broker.of(execution)).child_done(job, outcome)


async def cancel(execution_id: int, reason: str | None) -> bool:
    """Cancel a live execution (and its children); False when there is none to cancel."""
    executions = await job_store.lock_executions(Batch.current().conn, [execution_id])
    execution = executions.get(execution_id)
    if execution is None:
        return False
    return await (await Broker.of(execution)).cancel(reason)
