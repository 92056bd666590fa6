"""A worker pool on the bus: it registers, beats and deregisters without HTTP.

Registration and deregistration are durable commands (JetStream, with a reply); heartbeats are
fire-and-forget publishes onto the pool's own heartbeat subject, which the heartbeats stream
captures. A beat answered `unknown` (the registry lost or never had us) triggers a new
registration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from nats.aio.msg import Msg
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from noetl.bus import subjects
from noetl.bus.connection import Bus, BusUnavailable
from noetl.bus.envelope import OUTCOMES, Command, new_request_id, utcnow
from noetl.bus.requests import Late, Requester
from noetl.bus.streams import ensure_streams
from noetl.contracts.runtime import Deregistration, Heartbeat, WorkerPoolRegistration

log = logging.getLogger(__name__)

REGISTER_TIMEOUT = 10.0
DEREGISTER_WAIT = 2.0  # the command is durable once the stream has it; the reply is a courtesy


class RegistrationFailed(RuntimeError):
    pass


class WorkerPool:
    def __init__(
        self, bus: Bus, *, name: str, runtime: str, capacity: int, heartbeat_interval: float
    ) -> None:
        self.bus = bus
        self.requester = Requester(bus)
        self.registration = WorkerPoolRegistration(
            name=name, runtime=runtime, capacity=capacity, pid=os.getpid(), hostname=socket.gethostname()
        )
        self.heartbeat_interval = heartbeat_interval
        self.runtime_id: str | None = None
        self._unknown = asyncio.Event()

    @property
    def name(self) -> str:
        return self.registration.name

    def healthy(self) -> bool:
        """Registered and not told it is unknown: only then does the pool take jobs."""
        return self.runtime_id is not None and not self._unknown.is_set()

    async def start(self) -> None:
        """Subscribe for replies, then register (before the first beat), retrying until it takes."""
        await ensure_streams(self.bus.js, self.bus.replicas)
        await self.requester.subscribe(self.bus)
        await self.bus.nc.subscribe(subjects.heartbeat_unknown("worker_pool", self.name), cb=self._on_unknown)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((RegistrationFailed, BusUnavailable)),
            wait=wait_exponential(min=0.2, max=5),
            before_sleep=lambda state: log.warning(
                "worker pool %s: %s", self.name, state.outcome.exception()
            ),
        )
        async for attempt in retrying:
            with attempt:
                await self.register()

    async def register(self) -> None:
        command = Command(
            id=new_request_id(),
            type=subjects.command_type(subjects.RUNTIME_REGISTER),
            payload=self.registration.as_payload(),
        )
        outcome = await self.requester.send(
            subjects.RUNTIME_REGISTER, command, REGISTER_TIMEOUT, recorded=False
        )
        if isinstance(outcome, Late) or outcome.error or outcome.result is None:
            raise RegistrationFailed(f"registration of {self.name!r} failed: {outcome!r}")
        self.runtime_id = outcome.result["runtime_id"]
        self._unknown.clear()
        log.info("worker pool %s registered (runtime_id %s)", self.name, self.runtime_id)

    async def beat(self) -> None:
        beat = Heartbeat(kind="worker_pool", name=self.name, sent_at=utcnow())
        command = Command(
            id=new_request_id(), type=subjects.HEARTBEAT_TYPE, payload=beat.model_dump(mode="json")
        )
        # No headers: the registry answers only "unknown", on our own subject.
        await self.bus.nc.publish(
            subjects.heartbeat("worker_pool", self.name), command.model_dump_json().encode()
        )

    async def _on_unknown(self, msg: Msg) -> None:
        try:
            outcomes = OUTCOMES.validate_json(msg.data)
        except ValueError:
            return
        if any(o.error and o.error.code == "unknown" for o in outcomes):
            self._unknown.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Beat every interval until `stop`; register again whenever the registry forgot us."""
        while not stop.is_set():
            if self._unknown.is_set():
                log.warning("worker pool %s is unknown to the registry; registering again", self.name)
                try:
                    await self.register()
                except Exception as exc:
                    log.warning("worker pool %s: %s", self.name, exc)
            if self.bus.connected:
                await self.beat()
            try:
                await asyncio.wait_for(stop.wait(), self.heartbeat_interval)
            except TimeoutError:
                pass

    async def deregister(self) -> None:
        command = Command(
            id=new_request_id(),
            type=subjects.command_type(subjects.RUNTIME_DEREGISTER),
            payload=Deregistration(name=self.name, kind="worker_pool").model_dump(),
        )
        outcome = await self.requester.send(
            subjects.RUNTIME_DEREGISTER, command, DEREGISTER_WAIT, recorded=False
        )
        done = "accepted" if isinstance(outcome, Late) else "ok"
        log.info("worker pool %s deregistered (%s)", self.name, done)
