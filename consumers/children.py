"""Sub-playbooks: a `playbook` step (or a loop item of one) starts a child execution in the
transaction that entered it, with `parent_execution_id`, `parent_event_id` and `parent_step`,
its playbook's workload deep-merged with the step's data; the child's outcome comes back as a
command (`execution.child_done`, through the outbox) and becomes the step's result (its
`return_step`'s result, when the step names one), or fails the step. Locks are only ever taken
on one execution at a time, so parents and children never wait for each other."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from consumers.engine import ExecutionFailed, limits
from noetl.contracts.execution import EventStatus, ExecutionStatus
from noetl.contracts.jobs import ChildFinished, JobStatus
from noetl.playbook.document import deep_merge
from noetl.playbook.steps import PlaybookStep, Step
from noetl.store import catalog as catalog_store
from noetl.store import executions as store
from noetl.store import jobs as job_store
from noetl.store.jobs import ExecutionState, JobState, JobUpdate, NewJob, PendingItem
from noetl.store.outbox import NewEvent

if TYPE_CHECKING:
    from consumers.broker import Broker


class Children:
    """One broker's child executions."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def start(
        self, step: Step, job: NewJob | PendingItem, started: NewEvent | int | None, names: dict[str, Any]
    ) -> None:
        """Start the child execution that `job` waits for."""
        from consumers.broker import Broker

        assert isinstance(step, PlaybookStep)
        parent = self.broker
        depth = parent.execution.depth + 1
        if depth > limits().nesting:
            raise ExecutionFailed(
                f"step {step.name!r}: sub-playbooks nest deeper than {limits().nesting} levels"
            )
        version = None if step.version == "latest" else int(step.version)
        entry = await catalog_store.by_path(parent.conn, step.path, version)
        if entry is None:
            raise ExecutionFailed(
                f"step {step.name!r}: the playbook {step.path!r} (version {step.version}) "
                "is not in the catalog"
            )
        parameters = parent.render(step, step.input, names, "`data`")
        if not isinstance(parameters, dict):
            raise ExecutionFailed(
                f"step {step.name!r}: its data must render to a mapping, not {parameters!r:.80}"
            )
        parent_event = await parent.batch.event_id(started)
        (row,) = await store.add(
            parent.conn,
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
                    "parent_execution_id": str(parent.execution_id),
                    "parent_event_id": None if parent_event is None else str(parent_event),
                    "parent_step": step.name,
                    "metadata": None,
                    "depth": depth,
                }
            ],
        )
        if isinstance(job, NewJob):
            job.child_execution_id = row["execution_id"]
        else:
            await job_store.waits_for(parent.conn, job.job_id, row["execution_id"])
        child = ExecutionState(
            execution_id=row["execution_id"],
            catalog_id=entry["catalog_id"],
            path=entry["path"],
            version=entry["version"],
            status=ExecutionStatus.RUNNING,
            parent_execution_id=str(parent.execution_id),
            steps=0,
            active=0,
            done=0,
            depth=depth,
        )
        broker = await Broker.of(child, entry["payload"])
        broker.knows(row["workload"], {})
        first = broker.emit(
            "execution_start",
            EventStatus.STARTED,
            parent=parent_event,
            catalog_id=str(entry["catalog_id"]),
            context={"path": entry["path"], "version": entry["version"], "workload": row["workload"]},
            parent_step=step.name,
        )
        await broker.begin(first)

    async def done(self, job: JobState, outcome: ChildFinished) -> None:
        """The child execution `job` waited for has ended: the job ends as it did."""
        broker = self.broker
        item = job.idx is not None  # a loop's item (its job holds one)
        about = {
            "step": job.step,
            "node_type": job.node_type,
            "index": job.idx,
            "item": job.item[0] if item else None,
            "parent": job.start_event_id,
            "job_id": str(job.job_id),
            "child_execution_id": outcome.child_execution_id,
        }
        if outcome.status != ExecutionStatus.COMPLETED:
            why = outcome.error or "no reason given"
            error = f"the child execution {outcome.child_execution_id} {outcome.status}: {why}"
            if item:
                error = f"item {job.idx}: {error}"
            broker.batch.update(job, JobUpdate.of(job.job_id, JobStatus.FAILED, error=error))
            if item:
                broker.emit("action_error", EventStatus.FAILED, error=error, **about)
            await broker.job_failed(job, error, None)
            return
        result = outcome.result
        step = broker.plan.worker_step(broker.plan.step(job.step))
        if isinstance(step, PlaybookStep) and step.return_step:
            result = await job_store.step_result(
                broker.conn, int(outcome.child_execution_id), step.return_step
            )
        broker.batch.update(
            job, JobUpdate.of(job.job_id, JobStatus.COMPLETED, result=[result] if item else result)
        )
        if item:
            broker.emit("action_completed", EventStatus.COMPLETED, result=result, **about)
        await broker.job_completed(job, [result] if item else result, None)
