"""`type: secrets`: a secret for later steps, from the credential store or this worker's
environment. Its result holds a reference (`secret_value`), never the value: the worker of a step
that reads `{{ step.secret_value }}` fetches it itself, so no event, log or stored result ever
holds it. Cloud secret managers are not reachable here: they fail with a clear error."""

from __future__ import annotations

import os
from typing import Any

from noetl.playbook.auth import secret_provider, secret_ref
from noetl.playbook.steps import SecretsStep
from noetl.worker.steps.base import StepFailed, StepRun, secret_of


async def run(run: StepRun) -> Any:
    step = run.step
    assert isinstance(step, SecretsStep)
    provider = secret_provider(run.render(step.provider, "`provider`"))
    name = str(run.render(step.secret_name, "`secret_name`")).strip()
    field = run.render(step.field, "`field`") if step.field else None
    if provider == "credential":
        credential = run.credentials.get(name)
        if credential is None:
            raise StepFailed(f"secret {name!r}: no such credential was granted to this step")
        secret_of(credential.data, field, name)  # the field exists
    elif provider == "env":
        if name not in os.environ:
            raise StepFailed(f"secret {name!r}: the environment variable is not set on this worker")
    else:
        raise StepFailed(
            f"the secret manager {provider!r} is not available in this deployment: store the secret as a "
            "credential (POST /api/credentials) and use `provider: credential`"
        )
    return {"secret_name": name, "provider": provider, "secret_value": secret_ref(provider, name, field)}
