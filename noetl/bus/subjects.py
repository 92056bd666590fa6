"""Every subject and stream name the system uses, and nothing else.

Hierarchy: ``noetl.<class>.<domain>...``. Classes: ``cmd`` (durable commands), ``hb``
(heartbeats), ``evt`` (events for subscribers), ``job`` (steps for worker pools, by runtime),
``qry`` (core request/reply reads), ``reply`` (answers to a command's requester), ``req`` (the
requests answered 202, whose outcome a client may come back for).
Any name that reaches a subject goes through ``token``, so no token is ever empty.

The streams accept exactly the subjects that some consumer reads (`COMMAND_SUBJECTS`, one heartbeat
subject per component kind): anything else is refused when it is published, instead of waiting in
a work queue that nobody empties.
"""

from __future__ import annotations

import re

COMMANDS_STREAM = "NOETL_COMMANDS"
HEARTBEATS_STREAM = "NOETL_HEARTBEATS"
EVENTS_STREAM = "NOETL_EVENTS"
JOBS_STREAM = "NOETL_JOBS"
ACCEPTED_STREAM = "NOETL_ACCEPTED"

HEARTBEATS_ALL = "noetl.hb.>"
EVENTS_ALL = "noetl.evt.>"
JOBS_ALL = "noetl.job.*"
ACCEPTED_ALL = "noetl.req.*"

RUNTIME_COMMANDS = "noetl.cmd.runtime.>"
RUNTIME_REGISTER = "noetl.cmd.runtime.register"
RUNTIME_DEREGISTER = "noetl.cmd.runtime.deregister"

HEARTBEAT_TYPE = "runtime.heartbeat"

CATALOG_COMMANDS = "noetl.cmd.catalog.>"
CATALOG_REGISTER = "noetl.cmd.catalog.register"

EXECUTION_COMMANDS = "noetl.cmd.execution.>"
EXECUTION_RUN = "noetl.cmd.execution.run"
EXECUTION_CANCEL = "noetl.cmd.execution.cancel"
EXECUTION_REPORT = "noetl.cmd.execution.report"
EXECUTION_DEAD_JOB = "noetl.cmd.execution.dead_job"
# Sent by the execution consumer to itself, through the outbox: a child execution's outcome.
EXECUTION_CHILD_DONE = "noetl.cmd.execution.child_done"

CREDENTIALS_COMMANDS = "noetl.cmd.credentials.>"
CREDENTIALS_REGISTER = "noetl.cmd.credentials.register"
CREDENTIALS_DELETE = "noetl.cmd.credentials.delete"

# Every command subject the commands stream accepts: a new command is one line here.
COMMAND_SUBJECTS: tuple[str, ...] = (
    RUNTIME_REGISTER,
    RUNTIME_DEREGISTER,
    CATALOG_REGISTER,
    EXECUTION_RUN,
    EXECUTION_CANCEL,
    EXECUTION_REPORT,
    EXECUTION_DEAD_JOB,
    EXECUTION_CHILD_DONE,
    CREDENTIALS_REGISTER,
    CREDENTIALS_DELETE,
)

QUERY_RUNTIME_COMPONENTS = "noetl.qry.runtime.components"
QUERY_REQUEST_OUTCOME = "noetl.qry.requests.outcome"
QUERY_CATALOG_LIST = "noetl.qry.catalog.list"
QUERY_CATALOG_ENTRY = "noetl.qry.catalog.entry"
QUERY_EXECUTIONS = "noetl.qry.execution.list"
QUERY_EXECUTION = "noetl.qry.execution.detail"
QUERY_EXECUTION_EVENTS = "noetl.qry.execution.events"
QUERY_EXECUTION_SUMMARY = "noetl.qry.execution.summary"
QUERY_CATALOG_VALIDATE = "noetl.qry.catalog.validate"
QUERY_CREDENTIALS_LIST = "noetl.qry.credentials.list"
QUERY_CREDENTIALS_GET = "noetl.qry.credentials.get"
# A worker's request for its job's credentials: core request/reply only, never a stream, so the
# secrets in the answer are kept nowhere on the bus.
QUERY_CREDENTIALS_RESOLVE = "noetl.qry.credentials.resolve"

EXECUTION_EVENTS_ALL = "noetl.evt.execution.>"

DEAD_LETTER_EVENT = "noetl.evt.system.dead_letter"

REPLY_PREFIXES = ("noetl.reply.", "_INBOX.")
"""Where answers may go: our own reply subjects, and the inboxes of NATS clients' requests."""

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
EMPTY_TOKEN = "%"
# A publishable subject: tokens of anything but dots, wildcards, whitespace and control characters,
# none of them empty.
_TOKEN = r"[^.\s*>\x00-\x1f\x7f]+"
_SUBJECT = re.compile(rf"{_TOKEN}(?:\.{_TOKEN})*")


def token(value: str) -> str:
    """One subject token from any string: safe ASCII kept, every other byte as ``%XX``, and the
    empty string as a lone ``%`` (no other string encodes to it).

    Dots, spaces, ``*``, ``>`` and non-ASCII letters cannot split or widen a subject, two
    different names never share a token, and no token is empty.
    """
    if _SAFE.issuperset(value):
        return value or EMPTY_TOKEN
    return "".join(ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in value)


def publishable(subject: str) -> bool:
    """Whether NATS can deliver a message published on `subject`: no empty token, no wildcard,
    no whitespace or control character."""
    return _SUBJECT.fullmatch(subject) is not None


def matches(pattern: str, subject: str) -> bool:
    """Whether `subject` falls under `pattern`, with NATS's wildcards (`*` one token, `>` the
    rest)."""
    wanted, given = pattern.split("."), subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return len(given) > i
        if i >= len(given) or (token != "*" and token != given[i]):
            return False
    return len(given) == len(wanted)


def is_reply(subject: str | None) -> bool:
    """Whether an answer may be sent to `subject`: a reply subject and nothing else, never a
    subject that a stream captures or a consumer applies."""
    return subject is not None and subject.startswith(REPLY_PREFIXES) and publishable(subject)


def command_type(subject: str) -> str:
    """A command's type is its subject below ``noetl.cmd.``: ``runtime.register``."""
    return subject.removeprefix("noetl.cmd.")


def heartbeat(kind: str, name: str) -> str:
    return f"noetl.hb.{token(kind)}.{token(name)}"


def heartbeats_of(kind: str) -> str:
    """The beats of every component of one kind: what the heartbeats stream accepts."""
    return f"noetl.hb.{token(kind)}.*"


def runtime_event(kind: str, name: str, event_type: str) -> str:
    return f"noetl.evt.runtime.{token(kind)}.{token(name)}.{token(event_type)}"


def catalog_event(path: str, event_type: str) -> str:
    return f"noetl.evt.catalog.{token(path)}.{token(event_type)}"


def credential_event(name: str, event_type: str) -> str:
    return f"noetl.evt.credentials.{token(name)}.{token(event_type)}"


def execution_event(execution_id: str, event_type: str) -> str:
    return f"noetl.evt.execution.{token(execution_id)}.{token(event_type)}"


def execution_events(execution_id: str | None = None, event_type: str | None = None) -> str:
    """A filter for subscribers: one execution, one event type, both, or everything."""
    execution = token(execution_id) if execution_id else "*"
    kind = token(event_type) if event_type else "*"
    return f"noetl.evt.execution.{execution}.{kind}"


def job(runtime: str) -> str:
    """Jobs for the worker pools of one runtime."""
    return f"noetl.job.{token(runtime)}"


def accepted(request_id: str) -> str:
    """Where the facade notes a request it answered 202: the proof that the id was seen."""
    return f"noetl.req.{token(request_id)}"


def reply(client_id: str) -> str:
    """Where one requester (a facade or worker process) hears the outcomes of its commands."""
    return f"noetl.reply.{token(client_id)}"


def answers(client_id: str) -> str:
    """The prefix under which one requester hears the answers to its queries, one subject each."""
    return f"noetl.reply.{token(client_id)}.q"


def heartbeat_unknown(kind: str, name: str) -> str:
    """Where a component hears that the registry does not know it, when its beats name no reply
    subject (as a worker's do: beats without headers cost the consumer least)."""
    return f"noetl.reply.unknown.{token(kind)}.{token(name)}"
