"""Publishing many messages to JetStream and waiting until each is stored, cheaply.

nats.py's `publish_async` spends, per message, a random token (a system call), a semaphore, a
done-callback and a parsed `PubAck`. The outbox relay publishes every event, so here the acks come
back on one wildcard inbox and each is only read for an error. The caller hears what became of
each message, so one refusal does not make it publish the others again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.errors import APIError, NoStreamResponseError

NO_RESPONDERS = "503"

Message = tuple[str, bytes, dict[str, str]]


class AckedPublisher:
    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._inbox = nc.new_inbox()
        self._tokens = itertools.count()
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(NatsError):  # a closed connection has dropped it already
                await self._sub.unsubscribe()
            self._sub = None

    async def publish_each(self, messages: list[Message], timeout: float) -> list[BaseException | None]:
        """Publish (subject, data, headers) messages in order and say what became of each: None
        once JetStream has stored it, else why not (the refusal, `TimeoutError` when its ack did
        not come within `timeout`, or the error that stopped the publishing)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        tokens = []
        try:
            for subject, data, headers in messages:
                token = str(next(self._tokens))
                future = loop.create_future()
                self._pending[token] = future
                tokens.append(token)
                futures.append(future)
                try:
                    await self.nc.publish(subject, data, reply=f"{self._inbox}.{token}", headers=headers)
                except NatsError as exc:  # too large, or the connection is gone
                    future.set_exception(exc)
            if futures:
                await asyncio.wait(futures, timeout=timeout)
            return [_fate(future) for future in futures]
        finally:
            for token in tokens:
                future = self._pending.pop(token)
                if not future.done():
                    future.cancel()

    async def _on_ack(self, msg: Msg) -> None:
        future = self._pending.get(msg.subject.rpartition(".")[2])
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        ack = json.loads(msg.data)
        if "error" in ack:
            # Built here: nats.py's `APIError.from_error` raises instead of returning the error.
            error = ack["error"]
            future.set_exception(
                APIError(
                    code=error.get("code"),
                    err_code=error.get("err_code"),
                    description=error.get("description"),
                )
            )
        else:
            future.set_result(None)


def _fate(future: asyncio.Future[None]) -> BaseException | None:
    if not future.done():
        return TimeoutError("no ack from JetStream in time")
    return future.exception()
