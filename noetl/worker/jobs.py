"""A worker pool's job loop: pull at most `capacity` jobs, run them under a lease, report.

The job's JetStream ack wait is its lease; the worker renews it (`in_progress`) while a step runs.
A worker that dies stops renewing, and the job is redelivered to another worker; the broker
ignores whatever the dead attempt might still say. On stop the worker takes no new jobs, lets
running steps finish within the grace period, and hands the rest back for redelivery.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from nats.aio.msg import Msg
from pydantic import ValidationError

from noetl.bus import subjects
from noetl.bus.connection import Bus
from noetl.bus.envelope import MSG_ID_HEADER, Command, Event, utcnow
from noetl.bus.pull import Puller
from noetl.bus.requests import Requester
from noetl.bus.streams import ensure_consumer, job_consumer
from noetl.contracts.jobs import DeadJob, ItemOutcome, Job, ReportKind, StepReport
from noetl.metrics import JOB_SECONDS, JOBS, JOBS_RUNNING, WORKER_CAPACITY
from noetl.playbook.steps import Retry
from noetl.settings import Settings
from noetl.worker.sandbox import SandboxPool
from noetl.worker.steps import Outcome, StepFailed, Tools, run_step, task_of

log = logging.getLogger(__name__)

LEASE_RENEW_FRACTION = 0.5
ENDINGS: frozenset[ReportKind] = frozenset({"completed", "failed", "exhausted"})  # a job's last report
STOP_SIGNALS = ("execution_cancelled", "execution_failed")


def data_dir(settings: Settings) -> Path:
    """Where steps keep files on this worker (DuckDB databases)."""
    return Path(settings.worker_data_dir or Path(tempfile.gettempdir()) / "noetl")


class JobRunner:
    def __init__(self, bus: Bus, *, worker: str, runtime: str, capacity: int, settings: Settings) -> None:
        self.bus = bus
        self.worker = worker
        self.runtime = runtime
        self.capacity = max(1, capacity)
        self.settings = settings
        self.sandboxes = SandboxPool(self.capacity)
        self._running: dict[asyncio.Task[None], str] = {}
        self._slot_free = asyncio.Event()
        self._handing_back = False
        WORKER_CAPACITY.labels(runtime).set(self.capacity)
        self._in_use = JOBS_RUNNING.labels(runtime)

    async def run(self, stop: asyncio.Event, accepting: Callable[[], bool] = lambda: True) -> None:
        config = job_consumer(
            self.runtime, lease=self.settings.job_lease_seconds, max_deliver=self.settings.job_max_deliver
        )
        await ensure_consumer(self.bus.js, subjects.JOBS_STREAM, config, self.bus.replicas)
        puller = Puller(self.bus.nc, subjects.JOBS_STREAM, config.durable_name)
        await puller.start()
        for signal in STOP_SIGNALS:
            await self.bus.nc.subscribe(subjects.execution_events(None, signal), cb=self._on_execution_ended)
        requester = Requester(self.bus)
        await requester.subscribe(self.bus)
        async with httpx.AsyncClient() as http:
            steps = Tools(
                sandboxes=self.sandboxes,
                http=http,
                requester=requester,
                worker_id=self.worker,
                data_dir=data_dir(self.settings),
                default_timeout=self.settings.step_timeout_seconds,
            )
            try:
                await self._pull(puller, steps, stop, accepting)
            finally:
                await puller.hand_back()  # what came after the last fetch is not ours to run
                await self._drain()
                await self.sandboxes.close()

    async def _pull(
        self,
        puller: Puller,
        steps: Tools,
        stop: asyncio.Event,
        accepting: Callable[[], bool],
    ) -> None:
        while not stop.is_set():
            free = self.capacity - len(self._running)
            if free <= 0 or not accepting() or not self.bus.connected:
                self._slot_free.clear()
                try:
                    await asyncio.wait_for(self._slot_free.wait(), 1.0)
                except TimeoutError:
                    pass
                continue
            try:
                msgs = await puller.fetch(free, 1.0)
            except Exception as exc:
                log.warning("worker %s: fetch failed: %r", self.worker, exc)
                await asyncio.sleep(1.0)
                continue
            if stop.is_set():  # told to stop while the fetch was out: these are not ours to run
                for msg in msgs:
                    await msg.nak()
                break
            for msg in msgs:
                await self._start(msg, steps)

    async def _start(self, msg: Msg, steps: Tools) -> None:
        try:
            job = Job.model_validate(Event.model_validate_json(msg.data).payload)
        except ValidationError as exc:
            await self._dead_letter(msg, f"undecodable job: {exc.errors(include_url=False)}")
            return
        task = asyncio.ensure_future(self._handle(job, msg, steps))
        self._running[task] = job.execution_id
        self._in_use.set(len(self._running))
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._in_use.set(len(self._running))
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("worker %s: job task failed", self.worker, exc_info=task.exception())

    async def _handle(self, job: Job, msg: Msg, steps: Tools) -> None:
        delivery = msg.metadata.num_delivered
        if 1 < delivery >= self.settings.job_max_deliver:
            # No delivery after this one: a step whose worker died (or stopped) every time fails
            # here, instead of leaving its execution running with nobody to finish it.
            error = f"the step was delivered {delivery} times and never finished: its worker died or stopped"
            now = utcnow()
            await self._report(job, "exhausted", 1, delivery, started_at=now, ended_at=now, error=error)
            await msg.ack()
            return
        lease = asyncio.ensure_future(self._renew(msg))
        started = time.perf_counter()
        try:
            await self._attempts(job, delivery, steps)
            await msg.ack()
            JOB_SECONDS.labels(self.runtime).observe(time.perf_counter() - started)
        except asyncio.CancelledError:
            if self._handing_back:
                JOBS.labels(self.runtime, "handed_back").inc()
                await msg.nak()
                log.info("worker %s: handed job %s (%s) back", self.worker, job.job_id, job.step)
            else:  # the execution was cancelled or failed elsewhere: nothing more to do
                await msg.ack()
            raise
        finally:
            lease.cancel()

    async def _attempts(self, job: Job, delivery: int, steps: Tools) -> None:
        try:
            retry = task_of(job).retry
        except StepFailed as exc:
            now = utcnow()
            await self._report(job, "failed", 1, delivery, started_at=now, ended_at=now, error=str(exc))
            return
        if job.loop is not None:
            await self._items(job, delivery, steps, retry)
            return
        for attempt in range(1, retry.max_attempts + 1):
            started_at = utcnow()
            try:
                outcome = await self._attempt(job, attempt, delivery, steps, started_at)
            except StepFailed as exc:
                kind: ReportKind = "attempt_failed" if attempt < retry.max_attempts else "failed"
                await self._report(
                    job, kind, attempt, delivery, started_at=started_at, ended_at=utcnow(), error=str(exc)
                )
                if kind == "failed":
                    return
                await asyncio.sleep(retry.delay_before(attempt + 1))
                continue
            await self._report(
                job,
                "completed",
                attempt,
                delivery,
                started_at=started_at,
                ended_at=utcnow(),
                result=outcome.result,
                saved=outcome.saved,
                input=outcome.input,
            )
            return

    async def _items(self, job: Job, delivery: int, steps: Tools, retry: Retry) -> None:
        """A loop job: its items side by side (as many at once as this pool's capacity), each
        with its own attempts; one report for them all."""
        assert job.loop is not None
        slots = asyncio.Semaphore(self.capacity)

        async def run(index: int, value: Any) -> ItemOutcome:
            async with slots:
                for attempt in range(1, retry.max_attempts + 1):
                    started_at = utcnow()
                    try:
                        outcome = await run_step(job, steps, self.settings.limit_result_bytes, (index, value))
                    except StepFailed as exc:
                        if attempt == retry.max_attempts:
                            return ItemOutcome(
                                index=index,
                                attempts=attempt,
                                started_at=started_at,
                                ended_at=utcnow(),
                                error=str(exc),
                            )
                        await asyncio.sleep(retry.delay_before(attempt + 1))
                        continue
                    return ItemOutcome(
                        index=index,
                        attempts=attempt,
                        started_at=started_at,
                        ended_at=utcnow(),
                        result=outcome.result,
                        saved=outcome.saved,
                    )
            raise AssertionError("unreachable: max_attempts >= 1")

        outcomes = list(await asyncio.gather(*(run(i, v) for i, v in job.loop.each())))
        failed = next((o for o in outcomes if o.error is not None), None)
        times = {
            "started_at": min(o.started_at for o in outcomes),
            "ended_at": max(o.ended_at for o in outcomes),
        }
        if failed is not None:
            await self._report(
                job,
                "failed",
                failed.attempts,
                delivery,
                items=outcomes,
                error=f"item {failed.index}: {failed.error}",
                **times,
            )
        else:
            await self._report(
                job, "completed", 1, delivery, items=outcomes, result=[o.result for o in outcomes], **times
            )

    async def _attempt(
        self, job: Job, attempt: int, delivery: int, steps: Tools, started_at: datetime
    ) -> Outcome:
        """Run one attempt. Its start is reported once it has run for the delay; an attempt that
        ends sooner carries its start in its final report (one command instead of two)."""
        ended = asyncio.Event()
        start = asyncio.ensure_future(
            self._report_start_after_delay(job, attempt, delivery, ended, started_at)
        )
        try:
            return await run_step(job, steps, self.settings.limit_result_bytes)
        finally:
            ended.set()
            await start  # skipped, or already on its way: then it lands before the final report

    async def _report_start_after_delay(
        self, job: Job, attempt: int, delivery: int, ended: asyncio.Event, started_at: datetime
    ) -> None:
        try:
            await asyncio.wait_for(ended.wait(), self.settings.worker_start_report_delay)
        except TimeoutError:
            await self._report(job, "started", attempt, delivery, started_at=started_at)

    async def _renew(self, msg: Msg) -> None:
        interval = self.settings.job_lease_seconds * LEASE_RENEW_FRACTION
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except Exception as exc:
                log.warning("worker %s: lease renewal failed: %r", self.worker, exc)

    async def _report(
        self,
        job: Job,
        kind: ReportKind,
        attempt: int,
        delivery: int,
        **fields: Any,
    ) -> None:
        report = StepReport(
            job_id=job.job_id,
            execution_id=job.execution_id,
            step=job.step,
            kind=kind,
            attempt=attempt,
            delivery=delivery,
            worker=self.worker,
            **fields,
        )
        await self._command(subjects.EXECUTION_REPORT, report.request_id(), report.model_dump(mode="json"))
        if kind in ENDINGS:
            JOBS.labels(self.runtime, kind).inc()

    async def _command(self, subject: str, request_id: str, payload: dict[str, object]) -> None:
        command = Command(id=request_id, type=subjects.command_type(subject), payload=payload)
        await self.bus.js.publish(
            subject, command.model_dump_json().encode(), headers={MSG_ID_HEADER: request_id}, timeout=5
        )

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        dead = DeadJob(
            subject=msg.subject,
            consumer=f"jobs-{self.runtime}",
            reason=reason,
            data=base64.b64encode(msg.data).decode(),
            deliveries=msg.metadata.num_delivered,
        )
        sequence = msg.metadata.sequence.stream
        await self._command(subjects.EXECUTION_DEAD_JOB, f"dead-job-{sequence}", dead.model_dump(mode="json"))
        await msg.term()

    async def _on_execution_ended(self, msg: Msg) -> None:
        try:
            execution_id = Event.model_validate_json(msg.data).entity.get("execution_id")
        except ValidationError:
            return
        for task, running_for in list(self._running.items()):
            if running_for == execution_id:
                task.cancel()

    async def _drain(self) -> None:
        """Let running steps finish within the grace period; hand the rest back."""
        if not self._running:
            return
        grace = self.settings.worker_grace_seconds
        log.info("worker %s: waiting up to %gs for %d step(s)", self.worker, grace, len(self._running))
        _, pending = await asyncio.wait(list(self._running), timeout=grace)
        self._handing_back = True
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
