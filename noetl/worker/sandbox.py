"""Python steps run in long-lived child processes, never in the worker itself.

A child runs one step at a time: it reads a JSON request on stdin, executes the step's code in a
fresh namespace (with NoETL's globals `context`, `os`, `json`, `datetime` and `uuid`), calls
`main` the way NoETL always did, and writes a JSON answer on its own copy of stdout (the step's
prints go to stderr). `main()` takes nothing; `main(input_data)` gets `{context, with, **data}`;
`main(**kwargs)` gets `context` and every input; named parameters get the inputs (or `context`)
of those names (an input named `input_data` too), and a missing one without a default is an
error. A step that overruns its
timeout, or is cancelled, costs its child: the child is killed and a new one started for the next
step. Keeping children alive spares the ~20 ms start of a Python interpreter on every step.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

from noetl.children import die_with_parent

CHILD = r"""
import datetime, inspect, json, os, sys, traceback, uuid
answers = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

def call(main, data, context):
    params = inspect.signature(main).parameters
    if not params:
        return main()
    if list(params) == ["input_data"] and "input_data" not in data:
        return main({"context": context, "with": data, **data})
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return main(**{"context": context, **data})
    available = {"context": context, **data}
    kwargs = {name: available[name] for name in params if name in available}
    if "input_data" in params and "input_data" not in kwargs:
        kwargs["input_data"] = {"context": context, "with": data, **data}
    return main(**kwargs)

for line in sys.stdin:
    request = json.loads(line)
    try:
        namespace = {"__name__": "__noetl_step__", "context": request["context"], "os": os, "json": json,
                     "datetime": datetime, "uuid": uuid}
        exec(compile(request["code"], "<step " + request["step"] + ">", "exec"), namespace)
        main = namespace.get("main")
        if not callable(main):
            raise NameError("the step's code does not define main()")
        answer = {"ok": True, "value": call(main, request["data"], request["context"])}
        text = json.dumps(answer, default=str, allow_nan=False)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        text = json.dumps({"ok": False, "error": error, "trace": traceback.format_exc(limit=8)}, default=str)
    answers.write(text + "\n")
"""

READ_LIMIT = 64 * 1024 * 1024


class CodeFailed(Exception):
    """The step's code raised, did not define main(), or overran its timeout."""


class Sandbox:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls) -> Sandbox:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-c",
            CHILD,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=READ_LIMIT,
            # A terminal's Ctrl-C is for the worker, which lets running steps finish; and the
            # child dies with its worker (also of SIGKILL), not next to the step's retried attempt.
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        return cls(proc)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def call(
        self, step: str, code: str, data: dict[str, Any], context: dict[str, Any]
    ) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"step": step, "code": code, "data": data, "context": context}
        self.proc.stdin.write(json.dumps(request, default=str).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise CodeFailed(f"the step's process exited (status {await self.proc.wait()})")
        return json.loads(line)

    async def kill(self) -> None:
        if self.alive:
            self.proc.kill()
        await self.proc.wait()


class SandboxPool:
    """At most `size` children; a step waits for a free one."""

    def __init__(self, size: int) -> None:
        self._idle: list[Sandbox] = []
        self._slots = asyncio.Semaphore(size)

    async def run(
        self, step: str, code: str, data: dict[str, Any], context: dict[str, Any], timeout: float
    ) -> Any:
        async with self._slots:
            sandbox = self._idle.pop() if self._idle else await Sandbox.spawn()
            try:
                answer = await asyncio.wait_for(sandbox.call(step, code, data, context), timeout)
            except TimeoutError:
                await sandbox.kill()
                raise CodeFailed(f"the step timed out after {timeout:g}s") from None
            except BaseException:
                await sandbox.kill()
                raise
            if sandbox.alive:
                self._idle.append(sandbox)
        if not answer["ok"]:
            raise CodeFailed(answer["error"])
        return answer["value"]

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for sandbox in idle:
            await sandbox.kill()
