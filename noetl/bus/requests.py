"""Publish a command durably and wait for its outcome; ask a query and read its answer.

The requester listens on one reply subject per process, subscribed before anything is published,
and names it in a header: JetStream does not keep a message's reply subject, and a core request to
a stream's subject would be answered by the stream's publish ack instead of the consumer. A reply
message holds the outcomes of a consumer batch, each with its request id.

A query's answer comes on a subject of its own under the requester's (one wildcard subscription
for all of them), in as many parts as its size takes: no answer is too large for the bus.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from noetl.bus import subjects
from noetl.bus.connection import Bus, BusUnavailable
from noetl.bus.envelope import (
    END_HEADER,
    MSG_ID_HEADER,
    OUTCOMES,
    PART_HEADER,
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
REDECLARE_TIMEOUT = 1.0  # declaring the streams again after a publish no stream took
SETTLE_FOR = 600.0  # how long a request of unknown fate is published again
SETTLE_FIRST_DELAY = 0.2
SETTLE_MAX_DELAY = 2.0


NO_RESPONDERS = "503"


class NotPublished(BusUnavailable):
    """The command surely reached no stream (the bus is away, no stream took it): nothing will
    apply it, so the client may send it again; the facade answers 503 at once."""


class AckUnknown(RuntimeError):
    """A publish went out and no ack came back: the command may be stored, or not."""


@dataclass(frozen=True)
class Late:
    """No outcome in time. `stored`: JetStream acked the command, so it will be applied. False:
    it went out and no ack came (a stream leader lost mid-publish); it may be stored, and the
    requester publishes it again until JetStream acks it (`Nats-Msg-Id` dedupes within the
    duplicate window, and a consumer applies a request id once). Either way: 202."""

    request_id: str
    stored: bool


class QueryUnanswered(RuntimeError):
    """Nobody answered a query (no consumer is serving it now), or the answer broke off."""


class Answer:
    """A query's answer as it arrives: `error`, a refusal, or the result's JSON text in parts."""

    def __init__(self, subject: str, inbox: asyncio.Queue[Msg], timeout: float, close: Any) -> None:
        self.subject = subject
        self.error: Outcome | None = None
        self.complete = False
        self._inbox = inbox
        self._timeout = timeout
        self._close = close
        self._next_part = 0
        self._first: Msg | None = None

    async def _next(self) -> Msg:
        try:
            return await asyncio.wait_for(self._inbox.get(), self._timeout)
        except TimeoutError as exc:
            self.close()
            raise QueryUnanswered(f"no answer on {self.subject} in {self._timeout}s") from exc

    async def start(self) -> None:
        """Wait for the first message: a refusal, or the first part of the result."""
        msg = await self._next()
        headers = msg.headers or {}
        if headers.get("Status") == NO_RESPONDERS and not msg.data:
            self.close()
            raise QueryUnanswered(f"no consumer serves {self.subject}")
        if PART_HEADER not in headers:
            self.close()
            self.error = Outcome.model_validate_json(msg.data)
            return
        self._first = msg  # the first part, read like the others (more may be queued behind it)

    async def parts(self, up_to: int | None = None) -> AsyncIterator[bytes]:
        """The result's parts in order, to the end or until `up_to` bytes came (then `parts` goes
        on from there). Raises QueryUnanswered when one is missing."""
        seen = 0
        while not self.complete and (up_to is None or seen < up_to):
            msg, self._first = self._first or await self._next(), None
            headers = msg.headers or {}
            if headers.get(PART_HEADER) != str(self._next_part):
                self.close()
                raise QueryUnanswered(f"the answer on {self.subject} lost part {self._next_part}")
            self._next_part += 1
            self.complete = END_HEADER in headers
            if self.complete:
                self.close()
            seen += len(msg.data)
            yield msg.data

    async def result(self) -> Any:
        """The whole result, parsed."""
        return json.loads(b"".join([part async for part in self.parts()]))

    def close(self) -> None:
        """Stop listening for this answer (what still comes is dropped)."""
        self._close()


class Requester:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.client_id = new_request_id()
        self.reply_to = subjects.reply(self.client_id)
        self.answers_to = subjects.answers(self.client_id)
        # Several sends may share one request id (one Idempotency-Key, concurrent retries).
        self._waiting: dict[str, set[asyncio.Future[Outcome]]] = {}
        self._asking: dict[str, asyncio.Queue[Msg]] = {}
        self._queries = itertools.count()
        self._unsettled: set[str] = set()  # late requests not yet known to be stored and noted
        self._settling: set[asyncio.Task[None]] = set()

    async def subscribe(self, bus: Bus) -> None:
        """An on-connect hook: listen for replies and answers before the first command goes out."""
        await bus.nc.subscribe(self.reply_to, cb=self._on_reply)
        await bus.nc.subscribe(f"{self.answers_to}.*", cb=self._on_answer)

    async def _on_answer(self, msg: Msg) -> None:
        inbox = self._asking.get(msg.subject.rpartition(".")[2])
        if inbox is not None:
            inbox.put_nowait(msg)

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

    async def send(
        self, subject: str, command: Command, timeout: float, *, recorded: bool = True
    ) -> Outcome | Late:
        """Publish `command` and wait up to `timeout` for its outcome; `Late` when it is late.

        A fresh request id cannot be in the stream yet, so its command is published without
        waiting for JetStream's ack: the outcome proves the command was stored. Only a late
        outcome calls for the ack, from a second publish that the duplicate window makes
        harmless. A request id from an `Idempotency-Key` may already be in the stream: its ack
        is awaited first. A `recorded` late request is noted (`note_accepted`), so that its
        outcome can be asked for by id.

        Raises `NotPublished` (a `BusUnavailable`) when the command surely reached no stream:
        the bus is away, or no stream took it. Once it may have been stored, the answer is `Late`.
        """
        if not self.bus.connected:  # at once: nothing is sent, nothing waited for
            raise NotPublished("the message bus is not reachable")
        nc = self.bus.nc
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        waiters = self._waiting.setdefault(command.id, set())
        waiters.add(future)
        data = command.model_dump_json().encode()
        stored = True
        try:
            if command.idempotent:
                try:
                    ack = await self._publish(subject, command.id, data)
                except AckUnknown:
                    stored = False
                else:
                    if ack.duplicate:
                        # The stream already holds this request id: the outcome comes from the store.
                        outcome = await self._await_stored(command, timeout)
                        if outcome is not None:
                            return outcome
                        return await self._late(subject, command.id, data, stored=True, recorded=recorded)
            else:
                try:
                    await nc.publish(subject, data, headers=self._headers(command.id))
                except NatsError as exc:
                    raise NotPublished(f"the bus did not take the command: {exc!r}") from exc
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                pass
            if not command.idempotent:
                # The first publish went out unacked: only an ack for this one settles its fate.
                try:
                    await self._publish(subject, command.id, data)
                except (AckUnknown, NotPublished) as exc:
                    log.warning("requester: request %s may not be stored yet: %s", command.id, exc)
                    stored = False
            return await self._late(subject, command.id, data, stored=stored, recorded=recorded)
        finally:
            waiters.discard(future)
            if not waiters and self._waiting.get(command.id) is waiters:
                del self._waiting[command.id]

    def _headers(self, request_id: str) -> dict[str, str]:
        return {MSG_ID_HEADER: request_id, REPLY_TO_HEADER: self.reply_to}

    async def _publish(self, subject: str, request_id: str, data: bytes) -> PubAck:
        """Publish and wait for JetStream's ack: the command is stored once this returns.

        Raises `NotPublished` when this publish surely reached no stream (the bus is away now, no
        stream takes the subject, a stream refused it), and `AckUnknown` when it went out and no
        ack came: then it may be stored. Neither waits once the bus is known to be away."""
        if not self.bus.connected:
            raise NotPublished("the message bus is not reachable")
        headers = self._headers(request_id)
        try:
            try:
                return await self.bus.js.publish(subject, data, timeout=PUBLISH_ACK_TIMEOUT, headers=headers)
            except NoStreamResponseError as exc:
                # No stream took it: a restarted server may have lost a memory stream, or a
                # cluster is electing the stream's leader. Declare (bounded), retry once.
                await self._redeclare(exc)
                return await self.bus.js.publish(subject, data, timeout=PUBLISH_ACK_TIMEOUT, headers=headers)
        except (NoStreamResponseError, NoRespondersError, APIError) as exc:
            raise NotPublished(f"no stream took the command: {exc!r}") from exc
        except (NatsTimeout, TimeoutError) as exc:
            if not self.bus.connected:  # the connection dropped under it: the publish may be lost
                raise AckUnknown(f"the bus went away during the publish: {exc!r}") from exc
            raise AckUnknown(f"no ack from JetStream in {PUBLISH_ACK_TIMEOUT}s: {exc!r}") from exc
        except NatsError as exc:
            raise NotPublished(f"the bus did not take the command: {exc!r}") from exc

    async def _redeclare(self, cause: Exception) -> None:
        """Declare the streams again, or `NotPublished`: the publish that asked for it reached none."""
        try:
            await asyncio.wait_for(ensure_streams(self.bus.js, self.bus.replicas), REDECLARE_TIMEOUT)
        except Exception as exc:  # whatever stopped it, nothing was stored
            raise NotPublished(
                f"no stream took the command ({cause!r}) and none could be declared: {exc!r}"
            ) from exc

    async def _late(
        self, subject: str, request_id: str, data: bytes, *, stored: bool, recorded: bool
    ) -> Late:
        """A late request: noted when `recorded`; one whose fate is unknown is published again in
        the background until JetStream acks it. Until it is noted, this requester itself says it
        was accepted (`was_accepted`)."""
        if stored and (not recorded or await self.note_accepted(request_id)):
            return Late(request_id, stored=True)
        self._unsettled.add(request_id)
        task = asyncio.create_task(self._settle(subject, request_id, data, stored, recorded))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return Late(request_id, stored=stored)

    async def _settle(self, subject: str, request_id: str, data: bytes, stored: bool, recorded: bool) -> None:
        """Publish the command until it is acked, and note it, each retried with backoff for up
        to `SETTLE_FOR`: a stream leader is elected again within seconds."""
        try:
            jobs = []
            if not stored:
                jobs.append(self._until_acked(lambda: self._publish(subject, request_id, data), request_id))
            if recorded:
                jobs.append(self._until_acked(lambda: self._note(request_id), request_id))
            await asyncio.gather(*jobs)
        finally:
            self._unsettled.discard(request_id)

    async def _until_acked(self, publish: Callable[[], Awaitable[Any]], request_id: str) -> None:
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + SETTLE_FOR, SETTLE_FIRST_DELAY
        while True:
            try:
                await publish()
                return
            except (NotPublished, AckUnknown) as exc:
                if loop.time() > deadline:
                    log.error("requester: gave up storing request %s: %s", request_id, exc)
                    return
                log.debug("requester: request %s not stored yet: %s", request_id, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, SETTLE_MAX_DELAY)

    async def close(self) -> None:
        """Stop settling (a process that stops leaves what it could not store to its clients)."""
        for task in list(self._settling):
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)

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

    async def note_accepted(self, request_id: str) -> bool:
        """Note a request answered 202, so that `GET /api/requests/{id}` can tell it from an id
        never seen; False when the note is not stored (then `_late` retries it)."""
        try:
            await self._note(request_id)
        except (NotPublished, AckUnknown) as exc:
            log.warning("requester: cannot note request %s as accepted yet: %s", request_id, exc)
            return False
        return True

    async def _note(self, request_id: str) -> None:
        if not self.bus.connected:
            raise NotPublished("the message bus is not reachable")
        subject, headers = subjects.accepted(request_id), {MSG_ID_HEADER: request_id}
        try:
            await self.bus.js.publish(subject, b"", timeout=PUBLISH_ACK_TIMEOUT, headers=headers)
        except (NatsTimeout, TimeoutError) as exc:
            raise AckUnknown(repr(exc)) from exc
        except (NatsError, APIError) as exc:
            raise NotPublished(repr(exc)) from exc

    async def was_accepted(self, request_id: str) -> bool:
        """Whether a request with this id was answered 202 (within the commands' retention). A
        request this process is still settling was; any replica of the stream answers the rest
        (a direct get), so this works while the stream elects a leader."""
        if request_id in self._unsettled:
            return True
        try:
            subject = subjects.accepted(request_id)
            await self.bus.js.get_last_msg(subjects.ACCEPTED_STREAM, subject, direct=True)
        except NotFoundError:
            return False
        except (NatsError, APIError) as exc:
            raise BusUnavailable(f"the bus cannot say whether {request_id} was accepted: {exc!r}") from exc
        return True

    async def _stored(self, request_id: str, timeout: float) -> tuple[Outcome, str | None] | None:
        answer = await self.query(subjects.QUERY_REQUEST_OUTCOME, {"request_id": request_id}, timeout)
        result = answer.result or {}
        stored = result.get("outcome")
        return (Outcome.model_validate(stored), result.get("fingerprint")) if stored else None

    async def stored_outcome(self, request_id: str, timeout: float) -> Outcome | None:
        answer = await self._stored(request_id, timeout)
        return answer[0] if answer else None

    async def ask(self, subject: str, payload: dict[str, Any], timeout: float) -> Answer:
        """A read: a request to whichever consumer serves `subject`; returns once its answer
        begins (`timeout` bounds the wait for each of its messages)."""
        nc = self.bus.require()
        token = str(next(self._queries))
        inbox: asyncio.Queue[Msg] = asyncio.Queue()
        self._asking[token] = inbox
        answer = Answer(subject, inbox, timeout, lambda: self._asking.pop(token, None))
        try:
            await nc.publish(subject, json.dumps(payload).encode(), reply=f"{self.answers_to}.{token}")
            await answer.start()
        except NatsError as exc:
            answer.close()
            raise BusUnavailable(f"the bus did not take the query: {exc!r}") from exc
        except BaseException:
            answer.close()
            raise
        return answer

    async def query(self, subject: str, payload: dict[str, Any], timeout: float) -> Outcome:
        """A read, its whole result parsed: for answers a process uses itself."""
        answer = await self.ask(subject, payload, timeout)
        if answer.error is not None:
            return answer.error
        return Outcome(request_id="", result=await answer.result())
