-- Jobs: one step of one execution, dispatched to a worker pool through the jobs stream.

CREATE TABLE jobs (
    job_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id  bigint      NOT NULL REFERENCES executions (execution_id),
    step          text        NOT NULL,
    status        text        NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'abandoned')),
    delivery      integer     NOT NULL DEFAULT 0,
    attempt       integer     NOT NULL DEFAULT 0,
    worker        text,
    result        jsonb,
    error         text,
    dispatched_at timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    ended_at      timestamptz
);

CREATE INDEX jobs_execution ON jobs (execution_id, job_id);
CREATE INDEX jobs_active ON jobs (execution_id) WHERE status IN ('queued', 'running');
