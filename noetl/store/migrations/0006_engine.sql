-- The engine for NoETL's whole playbook vocabulary: every step run is a job row (control steps,
-- loops and sub-playbooks too, which the broker runs itself), loop items are jobs of their loop,
-- and each job knows what caused it (fan-in joins, loops back) and the event that started it.

ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('pending', 'queued', 'running', 'completed', 'failed', 'abandoned'));

ALTER TABLE jobs
    ADD COLUMN kind               text    NOT NULL DEFAULT 'action'
        CHECK (kind IN ('action', 'control', 'loop', 'playbook')),
    ADD COLUMN node_type          text,
    ADD COLUMN cause_job_id       bigint,
    ADD COLUMN loop_job_id        bigint REFERENCES jobs (job_id),
    ADD COLUMN idx                integer,
    ADD COLUMN item               jsonb,
    ADD COLUMN child_execution_id bigint,
    ADD COLUMN start_event_id     bigint,
    ADD COLUMN total              integer,
    ADD COLUMN done               integer NOT NULL DEFAULT 0,
    ADD COLUMN context            jsonb,
    ADD COLUMN secret             boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS credentials text[] NOT NULL DEFAULT '{}';

-- The latest run of each step of an execution (its context, fan-in joins); loop items excluded.
CREATE INDEX jobs_runs ON jobs (execution_id, step, job_id DESC) WHERE loop_job_id IS NULL;
-- A loop's items in order (the next to dispatch, the results to aggregate).
CREATE INDEX jobs_items ON jobs (loop_job_id, idx) WHERE loop_job_id IS NOT NULL;
-- The job a child execution reports back to.
CREATE INDEX jobs_child ON jobs (child_execution_id) WHERE child_execution_id IS NOT NULL;

-- Steps dispatched so far: a loop back to an earlier step runs again, up to a bound.
-- What the broker counts of an execution, kept on its row (locked whenever the broker works on
-- it): steps dispatched (a loop back runs again, up to a bound), its live top-level jobs (none
-- left: it is done), its action steps completed (its progress), and how deep in sub-playbooks it
-- runs (a playbook that calls itself ends at a bound).
ALTER TABLE executions
    ADD COLUMN steps  integer NOT NULL DEFAULT 0,
    ADD COLUMN active integer NOT NULL DEFAULT 0,
    ADD COLUMN done   integer NOT NULL DEFAULT 0,
    ADD COLUMN depth  integer NOT NULL DEFAULT 0;
