"""`type: http`: one request. GET and DELETE send the input as the query string, other methods as
a JSON body (a form body when the Content-Type says so); `query` and `body` in the input say it
explicitly. The result is NoETL's: `{status_code, headers, url, elapsed, data}`, `data` the JSON
body (or its text). A non-2xx answer fails the step unless `raise_for_status: false`."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from noetl.playbook.steps import HttpStep
from noetl.templates import render_text
from noetl.worker.steps.base import StepFailed, StepRun

QUERY_METHODS = frozenset({"GET", "DELETE", "HEAD", "OPTIONS"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def auth_headers(run: StepRun, auth: Any) -> dict[str, str]:
    """Headers from the step's `auth`: bearer, basic, api_key (`{key, value}`) or header items."""
    headers: dict[str, str] = {}
    for item, fields in run.auth(auth):
        service = item.service or ("bearer" if "token" in fields else "")
        if service == "bearer":
            headers["Authorization"] = f"Bearer {fields.get('token', fields.get('value', ''))}"
        elif service == "basic":
            pair = f"{fields.get('username', '')}:{fields.get('password', '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif service == "api_key":
            headers[str(fields.get("key", "X-API-Key"))] = str(fields.get("value", ""))
        elif service == "header":
            headers.update({str(k): str(v) for k, v in (fields.get("headers") or fields).items()})
        else:
            raise StepFailed(
                f"auth for an http step must be bearer, basic, api_key or header, not {service!r}"
            )
    return headers


async def run(run: StepRun) -> Any:
    step = run.step
    assert isinstance(step, HttpStep)
    try:
        url = render_text(step.url, run.scope)
    except Exception as exc:
        raise StepFailed(f"`url`: {exc}") from None
    headers = {str(k): str(v) for k, v in (run.render(step.headers or {}, "`headers`")).items()}
    headers.update(auth_headers(run, step.auth))
    data = dict(run.input)
    query = {**(run.render(step.params or {}, "`params`")), **(data.pop("query", None) or {})}
    body = run.render(step.body, "`json`") if step.body is not None else data.pop("body", None)
    if body is None and data:
        if step.method in QUERY_METHODS:
            query.update(data)
        else:
            body = data
    form = any(t in headers.get("Content-Type", headers.get("content-type", "")) for t in FORM_TYPES)
    try:
        response = await run.tools.http.request(
            step.method,
            url,
            headers=headers,
            params=query or None,
            json=None if form else body,
            data=body if form else None,
            timeout=run.timeout,
        )
    except httpx.TimeoutException:
        raise StepFailed(f"{step.method} {url} timed out after {run.timeout:g}s") from None
    except httpx.HTTPError as exc:
        raise StepFailed(f"{step.method} {url} failed: {exc}") from None
    try:
        content: Any = response.json()
    except ValueError:
        content = response.text
    if response.is_error and step.raise_for_status:
        raise StepFailed(f"{step.method} {url} answered {response.status_code}: {str(content)[:500]}")
    return {
        "status_code": response.status_code,
        "headers": dict(response.headers),
        "url": str(response.url),
        "elapsed": response.elapsed.total_seconds(),
        "data": content,
    }
