"""The secrets of a deployment with auth on, made once and kept owner-readable only (0600):

- `tokens.json`: a bearer token per facade role (`noetl.facade.auth`), `{"admin": "...", ...}`;
- `nats.json`: a NATS user per part (`noetl.bus.permissions`), `{"facade": {"user", "password"}, ...}`;
- `database.json`: the password of the consumers' role (`noetl.store.roles`).

`noetl dev --auth` keeps them in `<data-dir>/credentials`; `noetl auth init` writes them anywhere,
with the environment file `docker compose --env-file` reads, for a deployment of one's own.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noetl.bus.permissions import PARTS, PERMISSIONS, Part, User, authorization
from noetl.facade.auth import ROLES, Role, digest
from noetl.problems import Problem
from noetl.store.roles import CONSUMER_ROLE

TOKENS_FILE = "tokens.json"
NATS_FILE = "nats.json"
DATABASE_FILE = "database.json"
NATS_CONFIG_FILE = "nats-server.conf"
COMPOSE_ENV_FILE = "compose.env"


class UnsafeSecrets(Problem):
    """A secrets file others may read, or one that does not hold what it should."""


@dataclass(frozen=True)
class NatsLogin:
    user: str
    password: str


@dataclass(frozen=True)
class Access:
    tokens: dict[Role, str]
    nats: dict[Part, NatsLogin]
    consumer_db_password: str
    # The schema owner's, for a database of the deployment's own (compose); `noetl dev`'s embedded
    # PostgreSQL trusts its local owner.
    owner_db_password: str

    @classmethod
    def generate(cls) -> Access:
        return cls(
            tokens={role: secrets.token_urlsafe(32) for role in ROLES},
            nats={part: NatsLogin(nats_user(part), secrets.token_urlsafe(24)) for part in PARTS},
            consumer_db_password=secrets.token_urlsafe(24),
            owner_db_password=secrets.token_urlsafe(24),
        )

    def token_digests(self) -> str:
        """`NOETL_API_TOKENS` for the facade: role -> sha256 of its token, never a token."""
        return json.dumps({role: digest(token) for role, token in self.tokens.items()})

    def nats_env(self, part: Part) -> dict[str, str]:
        """The settings a process of `part` connects to NATS with."""
        login = self.nats[part]
        return {"NOETL_NATS_USER": login.user, "NOETL_NATS_PASSWORD": login.password}

    def nats_server_config(self) -> str:
        """nats-server's `authorization` block with every part's user and its permissions."""
        return authorization({part: User(login.user, login.password) for part, login in self.nats.items()})

    def compose_env(self) -> str:
        """The variables `docker-compose.yml` reads: each part's NATS password (nats-server reads
        them too), the facade's token digests, the consumers' database password."""
        lines = [f"{nats_password_variable(part)}={login.password}" for part, login in self.nats.items()]
        lines += [
            f"NOETL_API_TOKENS={self.token_digests()}",
            f"NOETL_CONSUMER_DB_PASSWORD={self.consumer_db_password}",
            f"POSTGRES_PASSWORD={self.owner_db_password}",
        ]
        return "\n".join(lines) + "\n"

    def documents(self) -> dict[str, Any]:
        return {
            TOKENS_FILE: self.tokens,
            NATS_FILE: {part: {"user": x.user, "password": x.password} for part, x in self.nats.items()},
            DATABASE_FILE: {
                "consumer": {"user": CONSUMER_ROLE, "password": self.consumer_db_password},
                "owner": {"password": self.owner_db_password},
            },
        }


def nats_user(part: Part) -> str:
    return f"noetl-{part}"


def nats_password_variable(part: Part) -> str:
    """The variable that holds `part`'s NATS password in a deployment's environment."""
    return f"NOETL_NATS_{part.upper()}_PASSWORD"


def deployment_nats_config() -> str:
    """nats-server's `authorization` block for a deployment (`deploy/nats/auth.conf`): the
    passwords are `$VARIABLES` the server reads from its environment, so the file holds none."""
    users = {part: User(nats_user(part), password_env=nats_password_variable(part)) for part in PARTS}
    return authorization(users)


def helm_nats_users() -> list[dict[str, Any]]:
    """The same users for the official NATS Helm chart (`deploy/k8s/nats-values.yaml`), which
    writes `<< $VARIABLE >>` into nats-server's config as a bare variable read from its environment."""
    return [
        {
            "user": nats_user(part),
            "password": f"<< ${nats_password_variable(part)} >>",
            "permissions": PERMISSIONS[part].as_config(),
        }
        for part in PARTS
    ]


def load_or_create(directory: Path) -> Access:
    """The secrets kept in `directory`, made there on first use."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = {name: directory / name for name in (TOKENS_FILE, NATS_FILE, DATABASE_FILE)}
    if not any(path.exists() for path in paths.values()):
        access = Access.generate()
        for name, document in access.documents().items():
            write_private(paths[name], json.dumps(document, indent=2) + "\n")
        return access
    return _read(paths)


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner may read, created so (never widened, then narrowed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)


def _read(paths: dict[str, Path]) -> Access:
    documents = {name: _private_json(path) for name, path in paths.items()}
    try:
        tokens = documents[TOKENS_FILE]
        nats = documents[NATS_FILE]
        return Access(
            tokens={role: _text(tokens[role]) for role in ROLES},
            nats={
                part: NatsLogin(_text(nats[part]["user"]), _text(nats[part]["password"])) for part in PARTS
            },
            consumer_db_password=_text(documents[DATABASE_FILE]["consumer"]["password"]),
            owner_db_password=_text(documents[DATABASE_FILE]["owner"]["password"]),
        )
    except (KeyError, TypeError, ValueError):
        folder = next(iter(paths.values())).parent
        raise UnsafeSecrets(
            f"the secrets in {folder} are incomplete (each role, each part, the database): "
            "remove the folder's files to make new ones"
        ) from None


def _private_json(path: Path) -> Any:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UnsafeSecrets(f"{path} is missing: remove its folder's files to make new ones") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UnsafeSecrets(f"{path} may be read by others: chmod 600 it, or make new secrets")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UnsafeSecrets(f"{path} is not JSON: remove its folder's files to make new ones") from None


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(value)
    return value
