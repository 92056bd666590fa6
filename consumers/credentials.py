"""The credential store: registration (an upsert by name), deletion, the reads, and the query a
worker asks for the credentials of the job it runs.

Secrets arrive sealed and are stored as they came, once this consumer's keys have opened them
(an API sealing with a key the consumers lack is refused at once, not at the first read). They
are opened again only for a read that asks for them; no event, log line or outcome holds them.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from consumers.base import Domain, by_type, each, many
from consumers.queries import Forbidden, NotFound, Unavailable
from noetl.bus import subjects
from noetl.bus.envelope import Outcome
from noetl.contracts.credentials import (
    Credential,
    CredentialCommand,
    CredentialDeleted,
    CredentialFilter,
    CredentialList,
    CredentialRead,
    CredentialRecord,
    CredentialRef,
    CredentialsRequest,
    CredentialWithData,
    ResolvedCredentials,
)
from noetl.crypto import Cipher, NotConfigured, Undecryptable
from noetl.settings import Settings
from noetl.store import credentials as store
from noetl.store.outbox import NewEvent, add_events

LIVE_JOB = frozenset({"queued", "running"})


def _event(row: store.Row, event_type: str) -> NewEvent:
    """Which credential changed, never what it holds."""
    return NewEvent(
        type=f"credential.{event_type}",
        subject=subjects.credential_event(row.name, event_type),
        entity={"domain": "credentials", "name": row.name},
        payload={"id": str(row.id), "name": row.name, "type": row.type},
    )


def _record(row: store.Row) -> dict[str, Any]:
    return CredentialRecord.model_validate(row, from_attributes=True).model_dump(mode="json")


class Credentials:
    """The domain's handlers, around this process's keys."""

    def __init__(self, cipher: Cipher) -> None:
        self.cipher = cipher

    def _open(self, row: store.SealedRow) -> dict[str, Any]:
        try:
            data = self.cipher.decrypt_json(row.data_encrypted)
        except NotConfigured as exc:
            raise Unavailable(str(exc)) from None
        except Undecryptable as exc:
            raise Unavailable(f"credential {row.name!r} cannot be opened: {exc}") from None
        if not isinstance(data, dict):
            raise Unavailable(f"credential {row.name!r} does not hold a JSON object")
        return data

    def _refusal(self, request_id: str, command: CredentialCommand) -> Outcome | None:
        """Why a sealed registration cannot be stored, if it cannot."""
        try:
            data = self.cipher.decrypt_json(command.data_encrypted)
        except NotConfigured as exc:
            return Outcome.failed(request_id, "unavailable", str(exc))
        except Undecryptable:
            return Outcome.failed(
                request_id,
                "unavailable",
                f"credential {command.name!r} was sealed with a key the consumers do not hold: "
                "give the API and the credentials consumer the same NOETL_CREDENTIALS_KEY",
            )
        if not isinstance(data, dict):
            return Outcome.failed(request_id, "invalid", "data must be a JSON object")
        return None

    async def register(
        self, conn: AsyncConnection, commands: list[tuple[str, CredentialCommand]]
    ) -> list[Outcome]:
        outcomes = []
        # Name order: two consumers lock the rows of one batch in the same order (no deadlock);
        # the sort is stable, so two registrations of one name keep their order.
        for request_id, command in sorted(commands, key=lambda c: c[1].name):
            refusal = self._refusal(request_id, command)
            if refusal is not None:
                outcomes.append(refusal)
                continue
            row = await store.upsert(conn, command)
            await add_events(conn, [_event(row, "registered")])
            outcomes.append(Outcome(request_id=request_id, result=_record(row)))
        return outcomes

    async def delete(self, conn: AsyncConnection, request_id: str, ref: CredentialRef) -> Outcome:
        row = await store.delete(conn, ref)
        if row is None:
            return Outcome.failed(request_id, "not_found", f"credential not found: {ref.describe()}")
        await add_events(conn, [_event(row, "deleted")])
        deleted = CredentialDeleted(id=row.id, name=row.name)
        return Outcome(request_id=request_id, result=deleted.model_dump(mode="json"))

    async def listing(self, conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
        wanted = CredentialFilter.model_validate(payload)
        rows = await store.listing(conn, wanted.type or None, wanted.q or None)
        items = [CredentialRecord.model_validate(r, from_attributes=True) for r in rows]
        return CredentialList(items=items, filter=wanted).model_dump(mode="json")

    async def get(self, conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
        read = CredentialRead.model_validate(payload)
        row = await store.one(conn, read)
        if row is None:
            raise NotFound(f"credential not found: {read.describe()}")
        if not read.include_data:
            return _record(row)
        record = CredentialRecord.model_validate(row, from_attributes=True)
        return CredentialWithData(**record.model_dump(), data=self._open(row)).model_dump(mode="json")

    async def resolve(self, conn: AsyncConnection, payload: dict[str, Any]) -> dict[str, Any]:
        """A job's credentials, for the worker running it: only while the job is live, and only
        those its step names."""
        request = CredentialsRequest.model_validate(payload)
        grant = await store.job_grant(conn, int(request.job_id))
        if grant is None:
            raise Forbidden(f"job {request.job_id} does not exist: it may fetch no credential")
        if grant.status not in LIVE_JOB:
            raise Forbidden(f"job {request.job_id} is {grant.status}: it may fetch no credential")
        names = list(dict.fromkeys(request.names))
        refused = [n for n in names if n not in grant.credentials]
        if refused:
            raise Forbidden(f"job {request.job_id} may not fetch credential(s) {_names(refused)}")
        rows = {row.name: row for row in await store.by_names(conn, names)}
        missing = [n for n in names if n not in rows]
        if missing:
            raise NotFound(f"credential(s) not found: {_names(missing)}")
        found = [Credential(name=n, type=rows[n].type, data=self._open(rows[n])) for n in names]
        return ResolvedCredentials(credentials=found).model_dump(mode="json")


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)


def domain(settings: Settings) -> Domain:
    """The domain with this process's keys (a malformed key stops the start with a ValueError)."""
    handlers = Credentials(Cipher.from_setting(settings.credentials_key))
    apply = by_type(
        {
            subjects.command_type(subjects.CREDENTIALS_REGISTER): many(CredentialCommand, handlers.register),
            subjects.command_type(subjects.CREDENTIALS_DELETE): each(CredentialRef, handlers.delete),
        }
    )
    queries = {
        subjects.QUERY_CREDENTIALS_LIST: handlers.listing,
        subjects.QUERY_CREDENTIALS_GET: handlers.get,
        subjects.QUERY_CREDENTIALS_RESOLVE: handlers.resolve,
    }
    return Domain(
        durable="credentials-commands", commands=subjects.CREDENTIALS_COMMANDS, apply=apply, queries=queries
    )
