"""The database roles of the parts: the consumers' own (`noetl_consumer`, made by migration 0007)
and how it is given a login. The password reaches PostgreSQL only as a SCRAM-SHA-256 verifier, the
way `psql`'s `\\password` sends it, so no statement log ever holds it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any

from psycopg import AsyncConnection, sql

CONSUMER_ROLE = "noetl_consumer"
SCRAM_ITERATIONS = 4096


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, RFC 7677)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def grant_login(conn: AsyncConnection[Any], role: str, password: str) -> None:
    """Let `role` log in with `password` (set again on every call: the latest one holds)."""
    statement = sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(scram_verifier(password))
    )
    await conn.execute(statement)
