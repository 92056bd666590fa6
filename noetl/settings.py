"""Settings from the environment, one object for every process.

The facade reads only the bus settings and the credentials key; it is never given database
credentials.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from noetl.playbook.document import Limits
from noetl.problems import BadInput, Problem


class PostgresEnv(BaseSettings):
    """The usual libpq-style `POSTGRES_*` variables, used when no DSN is given."""

    model_config = SettingsConfigDict(env_prefix="POSTGRES_", extra="ignore")

    host: str | None = None
    port: int = 5432
    user: str = "postgres"
    password: str | None = None
    db: str = "postgres"

    def dsn(self) -> str | None:
        if not self.host:
            return None
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(self.db, safe='')}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOETL_", extra="ignore")

    # One server, or a comma-separated list of a cluster's servers (`servers_of`): a client
    # connects to any of them that is up and reconnects to any other.
    nats_url: str = "nats://127.0.0.1:4222"
    # This process's NATS user (`noetl.bus.permissions` says what each part's user may do): a user
    # and password, or a creds file (JWT and nkey seed). TLS: a CA to trust, and a client
    # certificate and key when the server asks for one (`noetl.bus.connection.nats_options`).
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_creds: Path | None = None
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    # Replicas of every stream and durable consumer: 3 on a three-node NATS cluster.
    stream_replicas: int = Field(1, ge=1, le=5)
    pg_dsn: str | None = None
    # `noetl db migrate` gives the consumers' least-privilege role (`noetl_consumer`) a login with
    # this password; consumers then connect as that role (`noetl.store.roles`).
    consumer_db_password: SecretStr | None = None
    # Comma-separated Fernet keys (`noetl.crypto`): the first seals credentials, all open them.
    credentials_key: SecretStr | None = None
    # The facade's bearer tokens (`noetl.facade.auth`): role -> sha256 hex digest(s), as JSON, from
    # a file and/or the variable. None configured: the facade is open, as before.
    api_tokens_file: Path | None = None
    api_tokens: SecretStr | None = None
    # The token the `noetl` client commands send (`Authorization: Bearer ...`).
    api_token: SecretStr | None = None

    api_reply_timeout: float = Field(5.0, gt=0)
    api_max_body_bytes: int = Field(512 * 1024, gt=0)
    heartbeat_retry_after: int = Field(3, ge=0)
    auto_recreate_runtime: bool = False
    worker_pool_name: str | None = None
    # `noetl worker`'s pool name when `--name` is not given; without either, host and pid.
    worker_name: str | None = None
    log_format: Literal["text", "json"] = "text"

    # Prometheus metrics (`noetl.metrics`): the facade's `GET /metrics` and its request counts
    # (off: neither); a consumer process's or a worker's own port (0: none), and how often a
    # consumer process reads the gauges it polls.
    api_metrics: bool = True
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    metrics_poll_interval: float = Field(15.0, gt=0)

    runtime_offline_seconds: float = Field(60.0, gt=0)
    runtime_sweep_interval: float = Field(15.0, gt=0)
    worker_heartbeat_interval: float = Field(5.0, gt=0)

    job_lease_seconds: float = Field(30.0, gt=0)
    job_max_deliver: int = Field(5, ge=1)
    worker_grace_seconds: float = Field(30.0, ge=0)
    # A step still running after this long reports its start at once; one that ends sooner reports
    # its start together with its end (one command instead of two; the same events).
    worker_start_report_delay: float = Field(0.1, ge=0)
    step_timeout_seconds: float = Field(300.0, gt=0)

    consumer_batch_size: int = Field(512, ge=1, le=4096)
    consumer_max_deliver: int = Field(5, ge=1)
    consumer_ack_wait: float = Field(30.0, gt=0)

    # Limits: what one request, command or stored document may hold. The facade refuses more with
    # a 4xx, and the consumers apply the same limits again to what arrives from the bus.
    limit_json_depth: int = Field(32, ge=2, le=128)
    # What one playbook and one run may weigh (`noetl.playbook.document.Limits`, the engine).
    limit_playbook_steps: int = Field(5_000, ge=1)
    limit_playbook_values: int = Field(200_000, ge=1)
    limit_playbook_depth: int = Field(64, ge=2, le=900)
    limit_steps_per_execution: int = Field(10_000, ge=1)
    limit_loop_items: int = Field(100_000, ge=1)
    limit_playbook_nesting: int = Field(16, ge=1)
    limit_result_bytes: int = Field(512 * 1024, ge=1024)
    worker_data_dir: str | None = None  # DuckDB files; default: a `noetl` directory under the temp dir

    @field_validator("nats_url")
    @classmethod
    def _names_servers(cls, value: str) -> str:
        servers_of(value)
        return value

    @property
    def nats_servers(self) -> list[str]:
        return servers_of(self.nats_url)

    def playbook_limits(self) -> Limits:
        return Limits(
            max_nodes=self.limit_playbook_values,
            max_depth=self.limit_playbook_depth,
            max_steps=self.limit_playbook_steps,
        )

    def database_dsn(self) -> str:
        try:
            dsn = self.pg_dsn or PostgresEnv().dsn()
        except ValidationError as exc:
            raise _bad_settings(exc, "POSTGRES_") from None
        if not dsn:
            raise Problem("no database configured: set NOETL_PG_DSN or POSTGRES_HOST")
        return dsn


def servers_of(url: str) -> list[str]:
    """The servers a `NOETL_NATS_URL` names: one URL, or a comma-separated list of a cluster's.
    nats-py takes a list, but reads a comma list given as one string as one bad URL."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError(f"no NATS server in {url!r}")
    return servers


def _bad_settings(exc: ValidationError, prefix: str = "NOETL_") -> BadInput:
    """`bad setting NOETL_JOB_LEASE_SECONDS: Input should be a valid number`, one per setting."""
    found = "; ".join(
        f"{prefix}{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
        for error in exc.errors()
    )
    return BadInput(f"bad setting {found}")


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise _bad_settings(exc) from None
