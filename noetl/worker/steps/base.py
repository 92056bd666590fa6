"""What every step runner shares: the job's scope (what its templates see), its rendered input,
its credentials, and the one error a step fails with."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from noetl.bus.requests import Requester
from noetl.contracts.credentials import Credential
from noetl.contracts.jobs import Job
from noetl.playbook.auth import SECRET_REF, AuthError, AuthItem, items
from noetl.playbook.steps import Step
from noetl.templates import RenderError, render, render_lenient
from noetl.worker.credentials import CredentialsUnavailable, fetch_credentials
from noetl.worker.sandbox import SandboxPool


class StepFailed(Exception):
    """The step failed; the message is what the execution's error will say."""


@dataclass(frozen=True, slots=True)
class Tools:
    """What a worker lends its steps."""

    sandboxes: SandboxPool
    http: httpx.AsyncClient
    requester: Requester
    worker_id: str
    data_dir: Path
    default_timeout: float


@dataclass(slots=True)
class StepRun:
    """One attempt at a step: the job, its step model, what its templates see, its input."""

    job: Job
    step: Step
    tools: Tools
    scope: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    credentials: dict[str, Credential] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)  # values no report may carry

    @property
    def timeout(self) -> float:
        return self.step.timeout or self.tools.default_timeout

    def render(self, value: Any, what: str, names: Mapping[str, Any] | None = None) -> Any:
        try:
            return render(value, self.scope if names is None else {**self.scope, **names})
        except RenderError as exc:
            raise StepFailed(f"{what}: {exc}") from None

    def auth(self, value: Any) -> list[tuple[AuthItem, dict[str, Any]]]:
        """The step's `auth` (or a save's), rendered, each item with the fields it stands for."""
        try:
            found = items(self.render(value, "`auth`"))
        except AuthError as exc:
            raise StepFailed(str(exc)) from None
        resolved = []
        for item in found:
            if item.source == "credential":
                credential = self.credentials.get(item.key or "")
                if credential is None:
                    raise StepFailed(f"credential {item.key!r} was not granted to this step")
                service = item.service or _service(credential.type)
                resolved.append(
                    (
                        AuthItem(item.alias, item.source, item.key, service, item.fields),
                        {**credential.data, **item.fields},
                    )
                )
            elif item.source == "inline":
                resolved.append((item, dict(item.fields)))
            else:
                variable = item.key if item.source == "env" else f"NOETL_SECRET_{(item.key or '').upper()}"
                if variable not in os.environ:
                    raise StepFailed(f"auth: the environment variable {variable!r} is not set on this worker")
                resolved.append((item, {"value": os.environ[variable], **item.fields}))
        return resolved

    def redact(self, value: Any) -> Any:
        """`value` with every secret this step knows replaced by `***`."""
        if not self.secrets:
            return value
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {key: self.redact(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.redact(item) for item in value]
        return value


REDACTED = "***"
SECRET_FIELDS = re.compile(r"pass|secret|token|key|private|credential", re.IGNORECASE)
MIN_SECRET_LENGTH = 4  # shorter values would redact everything that contains them


def _secret_strings(value: Any, found: set[str]) -> None:
    if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
        found.add(value)
    elif isinstance(value, dict):
        for item in value.values():
            _secret_strings(item, found)
    elif isinstance(value, list):
        for item in value:
            _secret_strings(item, found)


def _service(credential_type: str) -> str | None:
    """A credential's service from its type, as NoETL inferred it (postgres, gcs, s3, azure)."""
    lowered = credential_type.lower()
    return next((s for s in ("postgres", "gcs", "s3", "azure") if s in lowered), lowered or None)


async def prepare(run: StepRun, item: tuple[int, Any] | None = None) -> None:
    """Fetch the job's credentials, resolve secret references in its context, and build the scope
    (with `item`, (index, value), bound as the loop says) and the input: the transition's payload
    over the step's own input."""
    job, step = run.job, run.step
    if job.credentials:
        try:
            run.credentials = await fetch_credentials(run.tools.requester, job.job_id, job.credentials)
        except CredentialsUnavailable as exc:
            raise StepFailed(str(exc)) from None
    for credential in run.credentials.values():
        _secret_strings({k: v for k, v in credential.data.items() if SECRET_FIELDS.search(k)}, run.secrets)
    context = _resolve_secrets(job.context, run.credentials, run.secrets)
    scope: dict[str, Any] = {
        **context,
        "execution_id": job.execution_id,
        "env": dict(os.environ),
        "job": {
            "id": job.job_id,
            "uuid": str(uuid.uuid4()),
            "execution_id": job.execution_id,
            "node_id": f"{job.execution_id}:{job.step}",
            "worker_id": run.tools.worker_id,
        },
    }
    if job.loop is not None and item is not None:
        loop, (index, value) = job.loop, item
        scope[loop.element] = scope["value"] = value
        scope["_loop"] = {"current_index": index, "index": index, "item": value, "count": loop.count}
        scope.setdefault(loop.step, {"result_index": index})
        if loop.enumerate:
            scope["index"] = index
        if loop.chunked:
            scope["batch"] = value
    _render_workload(scope)
    run.scope = scope
    payload = run.render(job.payload or {}, "the transition's data")
    scope.update(payload)
    own = run.render(step.input, "the step's data")
    if not isinstance(own, dict):
        raise StepFailed(f"the step's data must render to a mapping, not {type(own).__name__}")
    run.input = {**own, **payload}
    scope.update(run.input)
    scope["input"] = scope["data"] = run.input


def _render_workload(scope: dict[str, Any]) -> None:
    """A workload is stored as written: its own templates (`{{ env.PG_HOST | default('db') }}`,
    `{{ job.uuid }}`) are rendered where a step uses it, leniently (NoETL did the same)."""
    workload = scope.get("workload")
    if not isinstance(workload, dict):
        return
    rendered = render_lenient(workload, scope)
    for key, value in workload.items():
        if scope.get(key) is value:  # the workload's keys, at top level
            scope[key] = rendered[key]
    scope["workload"] = rendered


def _resolve_secrets(value: Any, credentials: Mapping[str, Credential], found: set[str]) -> Any:
    """The context with each secret reference replaced by its value (fetched as a credential, or
    read from this worker's environment); each value is added to `found`."""
    if isinstance(value, dict):
        ref = value.get(SECRET_REF)
        if isinstance(ref, dict) and len(value) == 1:
            secret = _secret_value(ref, credentials)
            _secret_strings(secret, found)
            return secret
        return {k: _resolve_secrets(v, credentials, found) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_secrets(v, credentials, found) for v in value]
    return value


def _secret_value(ref: dict[str, Any], credentials: Mapping[str, Credential]) -> Any:
    key, wanted = str(ref.get("key")), ref.get("field")
    if ref.get("source") == "env":
        if key not in os.environ:
            raise StepFailed(f"secret {key!r}: the environment variable is not set on this worker")
        return os.environ[key]
    credential = credentials.get(key)
    if credential is None:
        raise StepFailed(f"secret {key!r}: the credential was not granted to this step")
    return secret_of(credential.data, wanted, key)


def secret_of(data: dict[str, Any], wanted: str | None, name: str) -> Any:
    """The secret a credential holds: its `field`, its only value, or all of it."""
    if wanted:
        if wanted not in data:
            raise StepFailed(f"secret {name!r} has no field {wanted!r}")
        return data[wanted]
    return next(iter(data.values())) if len(data) == 1 else data


Runner = Callable[[StepRun], Any]
