"""Reads over the bus: request/reply handlers in a queue group, answered from the store.

A handler returns its result as a dict, as JSON text, or as JSON text in fragments (an async
iterator, for results read page by page); whichever it is, the result goes back in as many
messages as its size takes (`max_payload` bounds one), so no result is too large to answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import psycopg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import TypeAdapter, ValidationError

from noetl.bus import subjects
from noetl.bus.connection import Bus
from noetl.bus.envelope import END_HEADER, PART_HEADER, ErrorCode, Outcome, invalid, new_request_id
from noetl.contracts.fields import check_json
from noetl.store import commands as command_store

log = logging.getLogger(__name__)

T = TypeVar("T")
Result = dict[str, Any] | bytes | AsyncIterator[bytes]
Query = Callable[[AsyncConnection, dict[str, Any]], Awaitable[Result]]

HEADERS_ROOM = 256  # the part headers and the protocol line, with room to spare
QUERY_MAX_DEPTH = 8  # a query is a flat object of filters


class Refused(Exception):
    """A query answered with an error: `code` is the outcome's, the message its detail."""

    code: ErrorCode


class NotFound(Refused, LookupError):
    """The thing a query asked for does not exist."""

    code = "not_found"


class Forbidden(Refused):
    """The asker may not have what it asked for."""

    code = "forbidden"


class Unavailable(Refused):
    """This consumer cannot answer it now (it lacks a setting, say)."""

    code = "unavailable"


async def serve(bus: Bus, pool: AsyncConnectionPool, handlers: dict[str, Query]) -> None:
    """Subscribe each handler in a queue group, so copies of a consumer share the reads. Returns
    once the server has the subscriptions: a read sent on another connection right after must
    find a responder."""
    for subject, handler in handlers.items():
        await bus.nc.subscribe(subject, queue=f"q.{subject}", cb=_responder(bus, pool, handler))
    await bus.nc.flush()


def _responder(bus: Bus, pool: AsyncConnectionPool, handler: Query) -> Callable[[Msg], Awaitable[None]]:
    async def respond(msg: Msg) -> None:
        if not subjects.is_reply(msg.reply):
            log.warning("query on %s names no reply subject (%r): not answered", msg.subject, msg.reply)
            return
        request_id = new_request_id()
        sent = False
        try:
            payload = json.loads(msg.data or b"{}")
            if not isinstance(payload, dict):
                raise ValueError("a query is a JSON object")
            check_json(payload, QUERY_MAX_DEPTH)
            async with pool.connection() as conn:
                # Closed before the connection goes back: a result read page by page holds it.
                async with aclosing(_fragments(await handler(conn, payload))) as fragments:
                    sent = True  # from here on the requester may have parts: a failure ends them
                    await send_result(bus.nc, msg.reply, fragments)
            return
        except Refused as exc:
            outcome = Outcome.failed(request_id, exc.code, str(exc))
        except ValidationError as exc:
            outcome = invalid(request_id, exc)
        except (ValueError, psycopg.DataError) as exc:  # what the store refuses is the query's fault
            outcome = Outcome.failed(request_id, "invalid", [_value_error(exc)])
        except Exception as exc:
            log.exception("query on %s failed", msg.subject)
            outcome = Outcome.failed(request_id, "unavailable", f"the store did not answer: {exc!r}")
        if sent:
            log.warning("query on %s failed after its answer began: %s", msg.subject, outcome.error)
        await bus.nc.publish(msg.reply, outcome.model_dump_json().encode())

    return respond


def _value_error(exc: Exception) -> dict[str, Any]:
    return {"type": "value_error", "loc": ["query"], "msg": str(exc), "input": None}


def _fragments(result: Result) -> AsyncIterator[bytes]:
    if isinstance(result, dict):
        # Not pydantic: a stored document may be deeper than its serializer goes.
        return _one(json.dumps(result, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode())
    if isinstance(result, bytes):
        return _one(result)
    return result


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def send_result(nc: NATS, reply: str, fragments: AsyncIterator[bytes]) -> None:
    """The result's JSON text to `reply`, in parts of at most what one message may hold; the last
    part says so. Parts go as the fragments come, so a result read page by page is never whole in
    memory."""
    size = max(1, nc.max_payload - HEADERS_ROOM)
    buffer = bytearray()
    part = 0
    async for fragment in fragments:
        buffer += fragment
        while len(buffer) > size:
            await nc.publish(reply, bytes(buffer[:size]), headers={PART_HEADER: str(part)})
            del buffer[:size]
            part += 1
    await nc.publish(reply, bytes(buffer), headers={PART_HEADER: str(part), END_HEADER: "1"})


def members(adapter: TypeAdapter[list[T]]) -> Callable[[list[T]], bytes]:
    """Items as the comma-separated members of a JSON array (no brackets), through `adapter`."""

    def dump(items: list[T]) -> bytes:
        return adapter.dump_json(items)[1:-1]

    return dump


async def json_list(
    key: str,
    pages: AsyncIterator[list[T]],
    dump: Callable[[list[T]], bytes],
    tail: Callable[[int], dict[str, Any]],
) -> AsyncIterator[bytes]:
    """A JSON object, as fragments: `key` holds the items of every page (`dump` writes a page as
    the members of an array), then come the fields of `tail(count)`."""
    yield b'{"' + key.encode() + b'":['
    count = 0
    async with aclosing(pages):
        async for page in pages:
            if page:
                yield dump(page) if not count else b"," + dump(page)
                count += len(page)
    rest = json.dumps(tail(count), ensure_ascii=False, separators=(",", ":"))
    yield b"]" + (b"," + rest[1:].encode() if rest != "{}" else b"}")


async def request_outcome(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    request_id = str(payload.get("request_id", ""))
    row = (await command_store.stored(conn, [request_id])).get(request_id)
    return {"outcome": row["outcome"] if row else None, "fingerprint": row["fingerprint"] if row else None}


OUTCOME_QUERIES: dict[str, Query] = {subjects.QUERY_REQUEST_OUTCOME: request_outcome}
