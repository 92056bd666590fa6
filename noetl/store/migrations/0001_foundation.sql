-- The runtime registry, command idempotency, the event outbox and dead letters.

CREATE TABLE runtime_components (
    runtime_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL,
    kind        text        NOT NULL
        CHECK (kind IN ('worker_pool', 'broker', 'server_api', 'scheduler', 'monitor')),
    uri         text,
    status      text        NOT NULL,
    labels      jsonb,
    capacity    integer,
    runtime     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    heartbeat   timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, name)
) WITH (fillfactor = 50);

-- Heartbeats rewrite a row many times a minute. No index covers `heartbeat` or `status`, and pages
-- keep room (fillfactor), so a beat is a HOT update that touches no index; the sweeper's scan of
-- the table every few seconds costs less than indexing every beat would.

-- One row per applied command, written in the command's own transaction: a redelivered
-- command is answered from here instead of being applied again.
CREATE TABLE processed_commands (
    request_id   text PRIMARY KEY,
    type         text        NOT NULL,
    fingerprint  text,
    outcome      jsonb       NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX processed_commands_processed_at ON processed_commands (processed_at);

-- The outbox: events commit with the state they describe; the relay publishes them.
CREATE TABLE events (
    event_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type         text        NOT NULL,
    subject      text        NOT NULL,
    entity       jsonb       NOT NULL,
    payload      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

CREATE INDEX events_unpublished ON events (event_id) WHERE published_at IS NULL;

CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('noetl_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify_outbox
    AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();

CREATE TABLE dead_letters (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject    text        NOT NULL,
    consumer   text        NOT NULL,
    reason     text        NOT NULL,
    headers    jsonb,
    data       bytea       NOT NULL,
    deliveries integer,
    created_at timestamptz NOT NULL DEFAULT now()
);
