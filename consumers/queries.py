"""Reads over the bus: core request/reply handlers in a queue group, answered from the store."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from noetl.bus import subjects
from noetl.bus.connection import Bus
from noetl.bus.envelope import ErrorCode, Outcome, new_request_id
from noetl.store import commands as command_store

log = logging.getLogger(__name__)

Query = Callable[[AsyncConnection, dict[str, Any]], Awaitable[dict[str, Any]]]


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
        await bus.nc.subscribe(subject, queue=f"q.{subject}", cb=_responder(pool, handler))
    await bus.nc.flush()


def _responder(pool: AsyncConnectionPool, handler: Query) -> Callable[[Msg], Awaitable[None]]:
    async def respond(msg: Msg) -> None:
        request_id = new_request_id()
        try:
            payload = json.loads(msg.data or b"{}")
            if not isinstance(payload, dict):
                raise ValueError("a query is a JSON object")
            async with pool.connection() as conn:
                outcome = Outcome(request_id=request_id, result=await handler(conn, payload))
        except Refused as exc:
            outcome = Outcome.failed(request_id, exc.code, str(exc))
        except (ValueError, ValidationError) as exc:
            outcome = Outcome.failed(request_id, "invalid", str(exc))
        except Exception as exc:
            log.exception("query on %s failed", msg.subject)
            outcome = Outcome.failed(request_id, "unavailable", f"the store did not answer: {exc!r}")
        if msg.reply:
            await msg.respond(outcome.model_dump_json().encode())

    return respond


async def request_outcome(conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
    request_id = str(payload.get("request_id", ""))
    row = (await command_store.stored(conn, [request_id])).get(request_id)
    return {"outcome": row["outcome"] if row else None, "fingerprint": row["fingerprint"] if row else None}


OUTCOME_QUERIES: dict[str, Query] = {subjects.QUERY_REQUEST_OUTCOME: request_outcome}
