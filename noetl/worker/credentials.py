"""A worker's side of the credential store: the credentials its job may use, fetched by core
request/reply (never through a stream, so the answer's secrets are kept nowhere on the bus)."""

from __future__ import annotations

from pydantic import ValidationError

from noetl.bus import subjects
from noetl.bus.connection import BusUnavailable
from noetl.bus.requests import QueryUnanswered, Requester
from noetl.contracts.credentials import Credential, CredentialsRequest, ResolvedCredentials

FETCH_TIMEOUT = 5.0


class CredentialsUnavailable(RuntimeError):
    """A job's credentials could not be had. The message names them, never what they hold;
    `code` is the store's answer (`forbidden`, `not_found`, `unavailable`...)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


async def fetch_credentials(
    requester: Requester, job_id: str | int, names: list[str], timeout: float = FETCH_TIMEOUT
) -> dict[str, Credential]:
    """The named credentials, by name, for the step of job `job_id` (which must be live and name
    them). Raises CredentialsUnavailable."""
    if not names:
        return {}
    wanted = ", ".join(repr(n) for n in names)
    try:
        request = CredentialsRequest(job_id=str(job_id), names=names)
    except ValidationError as exc:
        errors = "; ".join(e["msg"] for e in exc.errors())
        raise CredentialsUnavailable(
            f"credential(s) {wanted} for job {job_id}: {errors}", "invalid"
        ) from None
    try:
        outcome = await requester.query(subjects.QUERY_CREDENTIALS_RESOLVE, request.model_dump(), timeout)
    except (QueryUnanswered, BusUnavailable) as exc:
        raise CredentialsUnavailable(
            f"credential(s) {wanted} for job {job_id}: the credential store did not answer ({exc})",
            "unavailable",
        ) from None
    if outcome.error is not None:
        raise CredentialsUnavailable(
            f"credential(s) {wanted} for job {job_id}: {outcome.error.detail}", outcome.error.code
        )
    resolved = ResolvedCredentials.model_validate(outcome.result)
    return {credential.name: credential for credential in resolved.credentials}
