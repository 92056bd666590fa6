"""What a request body may be: over the documented size it is refused with 413 before it is read
whole; JSON that the store or the bus could not hold is refused with FastAPI's 422."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from noetl.contracts.fields import check_json


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False
        too_large = False

        async def counted_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if too_large:
                # FastAPI turns any failure to read the body into its own 400: answer 413 instead.
                if not started:
                    started = True
                    await self._refuse(send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {"detail": f"request body is larger than the limit of {self.max_bytes} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON can hold")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number")
    return value


def _needs_walk(body: bytes, max_depth: int) -> bool:
    """Whether the parsed body could break a rule that parsing did not check. Only an escape
    (a backslash and `u`) or the UTF-8 bytes of a surrogate (0xED) make NUL or a lone surrogate,
    and a body with few brackets cannot nest deeply: most bodies need no second look."""
    return (
        b"\\u" in body
        or b"\xed" in body
        or body.count(b"[") + body.count(b"{") > max_depth
        or json.detect_encoding(body) != "utf-8"
    )


def parse_json(body: bytes, max_depth: int) -> Any:
    """A request body as JSON that the store and the bus can carry, or `json.JSONDecodeError`
    (which FastAPI answers with its 422 `json_invalid`): no NaN or infinities (Python's parser
    takes them, and `1e400` as infinity), no NUL or lone surrogates, no deeper than `max_depth`."""
    try:
        value = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite)
        if _needs_walk(body, max_depth):
            check_json(value, max_depth)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", "", 0) from None
    except ValueError as exc:  # not UTF-8, a number out of range, or what `check_json` refuses
        raise json.JSONDecodeError(str(exc), "", 0) from None
    return value


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body(), self.app.state.settings.limit_json_depth)
        return self._json


class StrictJsonRoute(APIRoute):
    """A route whose JSON body goes through `parse_json`: every route of the facade is one."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
