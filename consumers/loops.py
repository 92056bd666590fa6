"""Iterators: the collection rendered, then `where`, `order_by`, `limit` and `chunk`; every item
a pending job of the loop, a bounded number of them dispatched at a time (the rest wait in the
store, not in a message); results aggregated in item order once the last one ends.

A job runs a few items side by side (`items_per_job`); the jobs that end in one batch are
counted together at the end of the batch (`Loops.finish`): one update of the loop and one
dispatch of as many more jobs, however many ended.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from consumers.engine import KIND, Arrival, ExecutionFailed, limits, now, seconds_between
from consumers.flow import Context
from noetl.contracts.execution import EventStatus
from noetl.contracts.jobs import JobKind, JobStatus, LoopItems, StepReport
from noetl.playbook.steps import IteratorStep, SaveStep, Step, StepType
from noetl.store import jobs as job_store
from noetl.store.jobs import JobState, JobUpdate, LoopState, NewJob, PendingItem
from noetl.store.outbox import NewEvent
from noetl.templates import RenderError, read_back, render, truthy

if TYPE_CHECKING:
    from consumers.broker import Broker


class LoopRefused(ValueError):
    """The collection cannot be looped over; the message says why."""


def loop_names(step: IteratorStep, index: int, item: Any, count: int) -> dict[str, Any]:
    """What an item's templates see besides the context: the element, `_loop`, `index`/`batch`."""
    names: dict[str, Any] = {
        step.element: item,
        "_loop": {"current_index": index, "index": index, "item": item, "count": count},
        step.name: {"result_index": index},
    }
    if step.enumerate:
        names["index"] = index
    if step.chunk:
        names["batch"] = item
    return names


def items(step: IteratorStep, context: dict[str, Any], max_items: int) -> list[Any]:
    """The values the loop runs over, in order. Raises LoopRefused or RenderError."""
    collection = render(step.collection, context)
    if isinstance(collection, str):
        collection = read_back(collection)
    if collection is None:
        raise LoopRefused(f"the collection {step.collection!r:.100} is empty (it rendered to null)")
    if isinstance(collection, dict):
        raise LoopRefused(
            "the collection is a mapping; loop over a list (e.g. `{{ x.items }}` or a list of them)"
        )
    values = list(collection) if isinstance(collection, list) else [collection]
    if len(values) > max_items:
        raise LoopRefused(f"the collection has {len(values)} items; at most {max_items} are allowed")
    if step.where:
        values = [
            v for i, v in enumerate(values) if truthy(_each(step, step.where, context, i, v, len(values)))
        ]
    if step.order_by:
        keyed = [(_each(step, step.order_by, context, i, v, len(values)), i, v) for i, v in enumerate(values)]
        try:
            keyed.sort(key=lambda entry: (entry[0], entry[1]))
        except TypeError as exc:
            raise LoopRefused(f"`order_by` gives keys that do not compare: {exc}") from None
        values = [v for _, _, v in keyed]
    if step.limit is not None:
        values = values[: step.limit]
    if step.chunk:
        values = [values[i : i + step.chunk] for i in range(0, len(values), step.chunk)]
    return values


def _each(
    step: IteratorStep, template: str, context: dict[str, Any], index: int, item: Any, count: int
) -> Any:
    try:
        return render(template, {**context, **loop_names(step, index, item, count)})
    except RenderError as exc:
        raise RenderError(f"item {index}: {exc}") from None


Row = NewJob | PendingItem
MAX_ITEMS_PER_JOB = 16


def items_per_job(step: IteratorStep) -> int:
    """How many of a loop's items one job runs: a quarter of what may run at once, up to 16 (one
    for a sequential loop, or sub-playbooks: each item its own child execution)."""
    if step.item.type == StepType.PLAYBOOK:
        return 1
    return max(1, min(MAX_ITEMS_PER_JOB, step.in_flight // 4))


class Loops:
    """One broker's iterators."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.items_ended: Counter[int] = Counter()  # loop job -> its items that ended in this batch
        self.jobs_ended: Counter[int] = Counter()  # loop job -> its jobs that ended in this batch
        self.saved: set[int] = set()  # loops whose own save ended in this batch

    async def enter(
        self, step: Step, job: NewJob, started: NewEvent, context: Context, names: dict[str, Any]
    ) -> list[Arrival]:
        """The loop's items become pending jobs, a few items each, and the first are dispatched."""
        assert isinstance(step, IteratorStep)
        broker = self.broker
        try:
            values = items(step, names, limits().items)
        except (RenderError, LoopRefused) as exc:
            raise ExecutionFailed(f"step {step.name!r}: {exc}") from None
        if not values:
            return self._completed(step, job, [], started, context)
        task = step.item
        job.total = len(values)
        job.context = broker.job_context(task, names) if task.worker else None
        size = items_per_job(step)
        rows = []
        for first in range(0, len(values), size):
            chunk = values[first : first + size]
            bound = {**names, **loop_names(step, first, chunk[0], len(values))}
            rows.append(
                broker.batch.add_job(
                    NewJob(
                        execution_id=broker.execution_id,
                        step=step.name,
                        kind=KIND[task.type],
                        status=JobStatus.PENDING,
                        node_type=task.type,
                        cause=job,
                        start_event=started,
                        loop=job,
                        idx=first,
                        item=chunk,
                        credentials=broker.credentials(task, bound, job.context) if task.worker else [],
                    )
                )
            )
        running = rows[: max(1, step.in_flight // size)]
        for row in running:
            row.status = JobStatus.QUEUED if task.worker else JobStatus.RUNNING
        await self._dispatch(step, running, len(values), job.context, started)
        return []

    async def _dispatch(
        self,
        step: IteratorStep,
        rows: list[Row],
        count: int,
        context: dict[str, Any] | None,
        loop_event: NewEvent | int | None,
    ) -> None:
        """Each item's `loop_iteration`, and its job: for the pools, or a child execution."""
        broker, task = self.broker, step.item
        for row in rows:
            first, chunk = row.idx or 0, row.item
            for index, value in enumerate(chunk, start=first):
                broker.emit(
                    "loop_iteration",
                    EventStatus.RUNNING,
                    step=step.name,
                    node_type=StepType.ITERATOR,
                    index=index,
                    item=value,
                    parent=loop_event,
                )
            if task.type == StepType.PLAYBOOK:
                names = loop_names(step, first, chunk[0], count)
                await broker.children.start(
                    task, row, loop_event, {**(await broker.context()).values(), **names}
                )
                continue
            loop = LoopItems(
                step=step.name,
                element=step.element,
                first=first,
                items=chunk,
                count=count,
                chunked=step.chunk is not None,
                enumerate=step.enumerate,
            )
            broker.dispatch(task, row, context or {}, loop=loop)

    async def report(self, job: JobState, report: StepReport) -> str:
        """A loop job's report: an event for each of its items' ends, then the job's end."""
        broker = self.broker
        if report.kind in ("started", "attempt_failed"):
            broker.batch.update(job, JobUpdate.of(job.job_id, JobStatus.RUNNING, report))
            return report.kind
        about = {
            "step": job.step,
            "node_type": job.node_type,
            "worker": report.worker,
            "parent": job.start_event_id,
            "delivery": report.delivery,
            "job_id": str(job.job_id),
        }
        outcomes = {o.index: o for o in report.items or []}
        for index, value in enumerate(job.item, start=job.idx or 0):
            o = outcomes.get(index)
            if o is None:
                continue
            timing = {
                "time": o.ended_at,
                "duration": o.duration,
                "attempt": o.attempts,
                "index": index,
                "item": value,
            }
            if o.error is not None:
                broker.emit("action_error", EventStatus.FAILED, error=o.error, **timing, **about)
            else:
                broker.emit(
                    "action_completed",
                    EventStatus.COMPLETED,
                    result=o.result,
                    saved=o.saved,
                    **timing,
                    **about,
                )
        if report.kind == "completed":
            results = [
                outcomes[i].result if i in outcomes else None
                for i in range(job.idx or 0, (job.idx or 0) + len(job.item))
            ]
            broker.batch.update(job, JobUpdate.of(job.job_id, JobStatus.COMPLETED, report, result=results))
            self.job_finished(job)
        else:
            broker.batch.update(job, JobUpdate.of(job.job_id, JobStatus.FAILED, report, error=report.error))
            await broker.job_failed(job, report.error or "failed", report.ended_at, worker=report.worker)
        return report.kind

    def job_finished(self, job: JobState) -> None:
        """A loop job (or the loop's own save) ended: counted at the end of the batch."""
        assert job.loop_job_id is not None
        if job.idx is None:
            self.saved.add(job.loop_job_id)
        else:
            self.items_ended[job.loop_job_id] += len(job.item)
            self.jobs_ended[job.loop_job_id] += 1

    async def finish(self) -> None:
        """For each loop with jobs that ended in this batch: dispatch as many more, or, after the
        last, aggregate and go on."""
        items_ended, jobs_ended, saved = dict(self.items_ended), dict(self.jobs_ended), set(self.saved)
        self.items_ended.clear()
        self.jobs_ended.clear()
        self.saved.clear()
        broker = self.broker
        for loop_id in sorted(jobs_ended.keys() | saved):
            if broker.ended:
                return
            loop = await job_store.items_done(broker.conn, loop_id, items_ended.get(loop_id, 0))
            step = broker.plan.step(loop.step)
            assert isinstance(step, IteratorStep)
            if loop_id not in saved and loop.done < loop.total:
                following = await job_store.dispatch_items(broker.conn, loop_id, jobs_ended[loop_id])
                await self._dispatch(step, following, loop.total, loop.context, loop.start_event_id)
                continue
            results = await job_store.item_results(broker.conn, loop_id)
            if step.save is not None and loop_id not in saved:
                await self._save(step, loop, results)
                continue
            broker.batch.update_loop(loop_id, JobUpdate.of(loop_id, JobStatus.COMPLETED, result=results))
            broker.top_finished(completed=True)
            arrivals = self._completed(
                step, loop.job_id, results, loop.start_event_id, await broker.context(), loop
            )
            await broker.walk(arrivals)

    async def _save(self, step: IteratorStep, loop: LoopState, results: list[Any]) -> None:
        """The loop's own save runs on a worker, over the aggregated results."""
        broker = self.broker
        assert step.save is not None
        save = SaveStep(name=step.name, type=StepType.SAVE, save=step.save, auth=step.auth)
        row = broker.batch.add_job(
            NewJob(
                execution_id=broker.execution_id,
                step=step.name,
                kind=JobKind.ACTION,
                status=JobStatus.QUEUED,
                node_type=StepType.SAVE,
                cause=loop.job_id,
                loop=loop.job_id,
                start_event=None,
            )
        )
        names = (await broker.context()).with_(result=results)
        context = {**broker.job_context(save, names), "result": results}
        row.credentials = broker.credentials(save, names, context)
        broker.dispatch(save, row, context)

    def _completed(
        self,
        step: IteratorStep,
        job: NewJob | int,
        results: list[Any],
        started: NewEvent | int | None,
        context: Context,
        loop: LoopState | None = None,
    ) -> list[Arrival]:
        """Every item done: the loop's result is their results in item order."""
        broker = self.broker
        if isinstance(job, NewJob):  # an empty loop, done as it was entered
            job.status, job.result = JobStatus.COMPLETED, results
            broker.top_finished(completed=True)
        broker.emit(
            "loop_completed",
            EventStatus.COMPLETED,
            step=step.name,
            node_type=StepType.ITERATOR,
            result=results,
            context={"count": len(results)},
            parent=started,
        )
        done = broker.emit(
            "step_completed",
            EventStatus.COMPLETED,
            step=step.name,
            node_type=StepType.ITERATOR,
            result=results,
            duration=seconds_between(loop.started_at, now()) if loop else 0.0,
            parent=started,
        )
        context.record(step.name, results)
        broker.last_result = results
        return broker.following(step, job, done, context, results)
