-- The playbook catalog and executions.

-- The latest version per path: its row lock serialises concurrent registrations of one path.
CREATE TABLE catalog_paths (
    path           text PRIMARY KEY,
    latest_version integer NOT NULL
);

CREATE TABLE catalog (
    catalog_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    path       text        NOT NULL,
    version    integer     NOT NULL,
    kind       text        NOT NULL,
    content    text        NOT NULL,
    payload    jsonb       NOT NULL,
    meta       jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (path, version)
);

CREATE INDEX catalog_kind_created ON catalog (kind, catalog_id DESC);

CREATE TABLE executions (
    execution_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    catalog_id          bigint      NOT NULL REFERENCES catalog (catalog_id),
    path                text        NOT NULL,
    version             integer     NOT NULL,
    type                text        NOT NULL,
    status              text        NOT NULL,
    progress            integer     NOT NULL DEFAULT 0,
    workload            jsonb       NOT NULL,
    parameters          jsonb,
    merge               boolean     NOT NULL DEFAULT false,
    parent_execution_id text,
    parent_event_id     text,
    parent_step         text,
    metadata            jsonb,
    result              jsonb,
    error               text,
    start_time          timestamptz NOT NULL DEFAULT now(),
    end_time            timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX executions_newest ON executions (execution_id DESC);
CREATE INDEX executions_status ON executions (status, execution_id DESC);
CREATE INDEX executions_path ON executions (path, execution_id DESC);

-- An execution's events, in order, for its detail and its event stream.
CREATE INDEX events_execution ON events (((entity ->> 'execution_id')::bigint), event_id)
    WHERE entity ->> 'domain' = 'execution';
