"""What each part's NATS user may publish and subscribe to, from the subjects in `subjects.py`, and
the nats-server `authorization` block that grants it.

JetStream clients talk to the server's API on `$JS.API.>` subjects (create a consumer, pull the
next messages, read a message) and ack on `$JS.ACK.<stream>.>`; each part is given the API
subjects of the streams it uses, no more. Answers come on `_INBOX.>` (nats-py's inboxes: publish
acks, pulled messages, ordered consumers) and `noetl.reply.>` (a requester's own subject).

- facade: the commands HTTP clients send, heartbeats, queries, its notes of accepted requests;
  declares the streams; reads the events stream through ordered consumers (SSE).
- consumer: answers (replies, query answers), events, jobs, the execution commands the broker
  sends itself; declares the streams and its durables, pulls and acks commands and heartbeats.
- worker: registration, deregistration, heartbeats of worker pools, job reports, credential
  resolution; creates the streams when they are missing (never changes them); pulls, acks and
  renews jobs. Never a catalog command, nor run or cancel.
- subscriber: no subject of the system at all: only what an ordered consumer on the events stream
  needs (create it, delete it, answer its flow control).

`worker(runtime, name)` narrows a worker to one runtime's jobs and one pool's heartbeats, for a
deployment that keeps pools apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from noetl.bus import subjects

Part = Literal["facade", "consumer", "worker", "subscriber"]
PARTS: tuple[Part, ...] = get_args(Part)

API = "$JS.API"
REPLIES = ("_INBOX.>", "noetl.reply.>")


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def as_config(self) -> dict[str, dict[str, list[str]]]:
        return {"publish": {"allow": list(self.publish)}, "subscribe": {"allow": list(self.subscribe)}}


STREAMS = (
    subjects.COMMANDS_STREAM,
    subjects.HEARTBEATS_STREAM,
    subjects.JOBS_STREAM,
    subjects.ACCEPTED_STREAM,
    subjects.EVENTS_STREAM,
)


def _declare_streams(*, update: bool = True) -> tuple[str, ...]:
    """Create the system's streams (an existing one with the same config is left as it is) and,
    with `update`, reconcile a changed config: only parts that own the streams' shape update."""
    verbs = ("CREATE", "UPDATE", "INFO") if update else ("CREATE",)  # INFO: the replicas it had
    return tuple(f"{API}.STREAM.{verb}.{stream}" for verb in verbs for stream in STREAMS)


def _pull(stream: str, durable: str = "*") -> tuple[str, ...]:
    """Declare a durable on `stream`, pull from it, ack, nak and renew its messages."""
    return (
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"{API}.CONSUMER.INFO.{stream}.{durable}",  # the replicas it had, when declared again
        f"{API}.CONSUMER.CREATE.{stream}.{durable}",
        f"{API}.CONSUMER.CREATE.{stream}.{durable}.>",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    )


def _follow(stream: str) -> tuple[str, ...]:
    """An ordered (ephemeral, push) consumer on `stream`: create, recreate after a gap, delete,
    and answer the server's flow control."""
    return (
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


FACADE = Permissions(
    publish=(
        subjects.RUNTIME_REGISTER,
        subjects.RUNTIME_DEREGISTER,
        subjects.CATALOG_REGISTER,
        subjects.EXECUTION_RUN,
        subjects.EXECUTION_CANCEL,
        subjects.CREDENTIALS_REGISTER,
        subjects.CREDENTIALS_DELETE,
        subjects.HEARTBEATS_ALL,
        "noetl.qry.>",
        subjects.ACCEPTED_ALL,
        f"{API}.DIRECT.GET.{subjects.ACCEPTED_STREAM}.>",  # any replica answers, leader or not
        *_declare_streams(),
        *_follow(subjects.EVENTS_STREAM),
    ),
    subscribe=REPLIES,
)

CONSUMER = Permissions(
    publish=(
        *REPLIES,
        subjects.EVENTS_ALL,
        subjects.JOBS_ALL,
        subjects.EXECUTION_COMMANDS,
        *_declare_streams(),
        *_pull(subjects.COMMANDS_STREAM),
        *_pull(subjects.HEARTBEATS_STREAM),
    ),
    subscribe=("noetl.qry.>", *REPLIES),
)


def worker(runtime: str = "*", name: str = "*") -> Permissions:
    """A worker pool's user; `runtime` and `name` narrow it to one runtime and one pool."""
    durable = "*" if runtime == "*" else f"jobs-{subjects.token(runtime)}"
    pool = "*" if name == "*" else subjects.token(name)
    return Permissions(
        publish=(
            subjects.RUNTIME_REGISTER,
            subjects.RUNTIME_DEREGISTER,
            f"noetl.hb.worker_pool.{pool}",
            subjects.EXECUTION_REPORT,
            subjects.EXECUTION_DEAD_JOB,
            subjects.QUERY_CREDENTIALS_RESOLVE,
            # A pool may start before anything else, and its commands need their streams.
            *_declare_streams(update=False),
            *_pull(subjects.JOBS_STREAM, durable),
        ),
        subscribe=(*REPLIES, subjects.EXECUTION_EVENTS_ALL),
    )


SUBSCRIBER = Permissions(publish=_follow(subjects.EVENTS_STREAM), subscribe=("_INBOX.>",))

PERMISSIONS: dict[Part, Permissions] = {
    "facade": FACADE,
    "consumer": CONSUMER,
    "worker": worker(),
    "subscriber": SUBSCRIBER,
}


@dataclass(frozen=True)
class User:
    """A NATS user: its password given, or (`password_env`) a variable nats-server reads at start."""

    user: str
    password: str | None = None
    password_env: str | None = None


def authorization(users: Mapping[Part, User]) -> str:
    """The `authorization` block of a nats-server config: one user per part, with its permissions."""
    return grants([(user, PERMISSIONS[part]) for part, user in users.items()])


def grants(entries: Iterable[tuple[User, Permissions]]) -> str:
    """An `authorization` block for any users. A password read from the environment is written as
    a bare `$VARIABLE`, which nats-server resolves when it starts, so the file holds no secret."""
    lines = "".join(_entry(user, permissions) for user, permissions in entries)
    return "authorization {\n  users = [\n" + lines + "  ]\n}\n"


def _entry(user: User, permissions: Permissions) -> str:
    if user.password_env:
        password = f"${user.password_env}"
    elif user.password is not None:
        password = json.dumps(user.password)
    else:
        raise ValueError(f"NATS user {user.user!r} has no password")
    return (
        f"    {{user: {json.dumps(user.user)}, password: {password},\n"
        f"     permissions: {json.dumps(permissions.as_config())}}}\n"
    )
