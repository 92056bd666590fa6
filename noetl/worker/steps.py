"""Running one step of a job: render its templates, then run its action."""

from __future__ import annotations

from typing import Any

import httpx

from noetl.contracts.jobs import Job
from noetl.templates import RenderError, render
from noetl.worker.sandbox import CodeFailed, SandboxPool


class StepFailed(Exception):
    """The step failed; the message is what the execution's error will say."""


def timeout_of(job: Job, default: float) -> float:
    try:
        return float(job.definition.get("timeout", default))
    except (TypeError, ValueError):
        return default


def retry_of(job: Job) -> tuple[int, float]:
    """(max_attempts, delay) from `retry`; one attempt by default."""
    retry = job.definition.get("retry") or {}
    if not isinstance(retry, dict):
        return 1, 0.0
    try:
        return max(1, int(retry.get("max_attempts", 1))), max(0.0, float(retry.get("delay", 0)))
    except (TypeError, ValueError):
        return 1, 0.0


class StepRunner:
    def __init__(self, sandboxes: SandboxPool, http: httpx.AsyncClient, default_timeout: float) -> None:
        self.sandboxes = sandboxes
        self.http = http
        self.default_timeout = default_timeout

    async def run(self, job: Job) -> Any:
        step_type = job.definition.get("type")
        timeout = timeout_of(job, self.default_timeout)
        try:
            if step_type == "python":
                return await self._python(job, timeout)
            if step_type == "http":
                return await self._http(job, timeout)
        except RenderError as exc:
            raise StepFailed(str(exc)) from exc
        raise StepFailed(f"unknown step type {step_type!r}")

    async def _python(self, job: Job, timeout: float) -> Any:
        code = job.definition.get("code")
        if not isinstance(code, str) or not code.strip():
            raise StepFailed("a python step needs `code` defining main()")
        data = render(job.definition.get("data") or {}, job.context)
        if not isinstance(data, dict):
            raise StepFailed("a python step's `data` must be a mapping")
        try:
            result = await self.sandboxes.run(job.step, code, data, timeout)
        except CodeFailed as exc:
            raise StepFailed(str(exc)) from exc
        if isinstance(result, dict) and result.get("status") == "error":
            raise StepFailed(
                str(result.get("error") or result.get("message") or result.get("data") or "error")
            )
        return result

    async def _http(self, job: Job, timeout: float) -> Any:
        spec = render({k: v for k, v in job.definition.items() if k not in ("next", "step")}, job.context)
        url = spec.get("url") or spec.get("endpoint")
        if not isinstance(url, str) or not url:
            raise StepFailed("an http step needs a `url`")
        method = str(spec.get("method", "GET")).upper()
        body = spec.get("json", spec.get("payload"))
        try:
            response = await self.http.request(
                method,
                url,
                headers=spec.get("headers"),
                params=spec.get("params"),
                json=body if method not in ("GET", "HEAD") else None,
                timeout=timeout,
            )
        except httpx.TimeoutException as exc:
            raise StepFailed(f"{method} {url} timed out after {timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise StepFailed(f"{method} {url} failed: {exc}") from exc
        try:
            content: Any = response.json()
        except ValueError:
            content = response.text
        data = {"status_code": response.status_code, "headers": dict(response.headers), "body": content}
        if response.is_error and spec.get("raise_for_status", True):
            raise StepFailed(f"{method} {url} answered {response.status_code}")
        return {"status": "success", "data": data}
