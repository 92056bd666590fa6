"""Publish a command durably and wait for its outcome; ask a query and wait for the answer.

The requester listens on one reply subject per process, subscribed before anything is published,
and names it in a header: JetStream does not keep a message's reply subject, and a core request to
a stream's subject would be answered by the stream's publish ack instead of the consumer. A reply
message holds the outcomes of a consumer batch, each with its request id.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

from noetl.bus import subjects
from noetl.bus.connection import Bus, BusUnavailable
from noetl.bus.envelope import (
    MSG_ID_HEADER,
    OUTCOMES,
    REPLY_TO_HEADER,
    Command,
    Outcome,
    new_request_id,
    replayed,
)
from noetl.bus.streams import ensure_streams

log = logging.getLogger(__name__)

PUBLISH_ACK_TIMEOUT = 2.0
OUTCOME_POLL_INTERVAL = 0.1


class QueryUnanswered(RuntimeError):
    """Nobody answered a query: no consumer is serving it now."""


class Requester:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.client_id = new_request_id()
        self.reply_to = subjects.reply(self.client_id)
        # Several sends may share one request id (one Idempotency-Key, concurrent retries).
        self._waiting: dict[str, set[asyncio.Future[Outcome]]] = {}

    async def subscribe(self, bus: Bus) -> None:
        """An on-connect hook: listen for replies before the first command goes out."""
        await bus.nc.subscribe(self.reply_to, cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        try:
            outcomes = OUTCOMES.validate_json(msg.data)
        except ValueError:
            log.warning("requester: undecodable reply on %s", msg.subject)
            return
        for outcome in outcomes:
            for future in self._waiting.get(outcome.request_id, ()):
                if not future.done():
                    future.set_result(outcome)

    async def send(self, subject: str, command: Command, timeout: float) -> Outcome | None:
        """Publish `command` and wait up to `timeout` for its outcome; None when it is late.

        A fresh request id cannot be in the stream yet, so its command is published without
        waiting for JetStream's ack: the outcome proves the command was stored. Only a late
        outcome calls for the ack, from a second publish that the duplicate window makes
        harmless, so a 202 always stands for a stored command. A request id from an
        `Idempotency-Key` may already be in the stream: its ack is awaited first.

        Raises BusUnavailable when the bus does not take the command.
        """
        nc = self.bus.require()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        waiters = self._waiting.setdefault(command.id, set())
        waiters.add(future)
        data = command.model_dump_json().encode()
        try:
            if command.idempotent:
                ack = await self._publish(subject, command.id, data)
                if ack.duplicate:
                    # The stream already holds this request id: the outcome comes from the store.
                    return await self._await_stored(command, timeout)
            else:
                try:
                    await nc.publish(subject, data, headers=self._headers(command.id))
                except NatsError as exc:
                    raise BusUnavailable(f"the bus did not take the command: {exc!r}") from exc
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                if not command.idempotent:
                    await self._publish(subject, command.id, data)
                return None
        finally:
            waiters.discard(future)
            if not waiters and self._waiting.get(command.id) is waiters:
                del self._waiting[command.id]

    def _headers(self, request_id: str) -> dict[str, str]:
        return {MSG_ID_HEADER: request_id, REPLY_TO_HEADER: self.reply_to}

    async def _publish(self, subject: str, request_id: str, data: bytes) -> PubAck:
        """Publish and wait for JetStream's ack: the command is stored once this returns."""
        headers = self._headers(request_id)
        try:
            try:
                return await self.bus.js.publish(subject, data, timeout=PUBLISH_ACK_TIMEOUT, headers=headers)
            except NoStreamResponseError:
                # No stream took it: a restarted server may have lost a memory stream. Declare, retry once.
                await ensure_streams(self.bus.js)
                return await self.bus.js.publish(subject, data, timeout=PUBLISH_ACK_TIMEOUT, headers=headers)
        except (NatsTimeout, NoStreamResponseError, NoRespondersError, APIError) as exc:
            raise BusUnavailable(f"the bus did not accept the command: {exc!r}") from exc

    async def _await_stored(self, command: Command, timeout: float) -> Outcome | None:
        """The recorded outcome of a repeated request id; a conflict if its payload differs."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            try:
                answer = await self._stored(command.id, timeout=1.0)
            except QueryUnanswered:
                answer = None
            if answer is not None:
                outcome, stored_print = answer
                return replayed(command, outcome.model_dump(), stored_print)
            await asyncio.sleep(OUTCOME_POLL_INTERVAL)
        return None

    async def _stored(self, request_id: str, timeout: float) -> tuple[Outcome, str | None] | None:
        answer = await self.query(subjects.QUERY_REQUEST_OUTCOME, {"request_id": request_id}, timeout)
        result = answer.result or {}
        stored = result.get("outcome")
        return (Outcome.model_validate(stored), result.get("fingerprint")) if stored else None

    async def stored_outcome(self, request_id: str, timeout: float) -> Outcome | None:
        answer = await self._stored(request_id, timeout)
        return answer[0] if answer else None

    async def query(self, subject: str, payload: dict[str, Any], timeout: float) -> Outcome:
        """A read: core request/reply to whichever consumer serves `subject`."""
        nc = self.bus.require()
        try:
            msg = await nc.request(subject, json.dumps(payload).encode(), timeout=timeout)
        except NoRespondersError as exc:
            raise QueryUnanswered(f"no consumer serves {subject}") from exc
        except NatsTimeout as exc:
            raise QueryUnanswered(f"no answer on {subject} in {timeout}s") from exc
        return Outcome.model_validate_json(msg.data)
