-- The credential store: secrets that playbook steps name in `auth:`, sealed with Fernet
-- (`noetl.crypto`); only the sealed bytes are kept.
CREATE TABLE credentials (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text        NOT NULL UNIQUE,
    type           text        NOT NULL,
    data_encrypted bytea       NOT NULL,
    meta           jsonb,
    tags           text[]      NOT NULL DEFAULT '{}',
    description    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The credentials a job's step may fetch, by name; the engine fills it at dispatch.
ALTER TABLE jobs ADD COLUMN credentials text[] NOT NULL DEFAULT '{}';
