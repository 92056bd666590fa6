"""What a job for the worker pools carries besides its step: the part of the execution's context
its templates read (so a job stays small whatever the context holds), and the names of the
credentials its worker may fetch (its `auth`, its save's, a `secrets` step's own, and those
behind secret references in its context)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consumers.flow import Plan
from noetl.playbook.auth import credential_names, secret_provider, secret_refs
from noetl.playbook.steps import SecretsStep, Step
from noetl.templates import paths, prune


def context_for(
    plan: Plan, step: Step, values: dict[str, Any], payload: dict[str, Any] | None
) -> dict[str, Any]:
    """The part of `values` the worker's copy of `step` (and the transition's payload) reads:
    all of it for python code that asks for its context."""
    wanted = plan.paths(step)
    if wanted is None:
        return values
    return prune(values, wanted | paths(payload) if payload else wanted)


def credentials_for(
    step: Step, render: Callable[[Any, str], Any], context: dict[str, Any] | None
) -> list[str]:
    """The credentials a worker may fetch for `step`; `render(template, what)` renders a field
    of the step for the broker."""
    found: set[str] = set()
    for auth in (step.auth, step.save.auth if step.save else None):
        if auth is not None:
            found |= credential_names(render(auth, "`auth`"))
    if isinstance(step, SecretsStep) and secret_provider(render(step.provider, "`provider`")) == "credential":
        found.add(str(render(step.secret_name, "`secret_name`")))
    if context:
        found |= {str(ref.get("key")) for ref in secret_refs(context) if ref.get("source") == "credential"}
    return sorted(found)
