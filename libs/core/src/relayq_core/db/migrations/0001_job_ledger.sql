-- The job ledger: one row per job, shared by ingest (writes it at submit) and workers (record
-- each attempt and the outcome). The idempotency key is a uniqueness constraint, never a
-- check-before-write: two racing submits or deliveries are serialised by Postgres itself.
CREATE TABLE relayq_jobs (
    job_id           text PRIMARY KEY,
    idempotency_key  text NOT NULL UNIQUE,
    task             text NOT NULL,
    queue            text NOT NULL,
    payload          jsonb NOT NULL,
    -- sha256 of the canonical (task, payload) JSON: how a repeated submit is told apart from a
    -- conflicting one without comparing large payloads.
    fingerprint      bytea NOT NULL,
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'dead_lettered')),
    attempt_count    integer NOT NULL DEFAULT 0,
    result           jsonb,
    last_error       text,
    trace_id         text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- NULL until the broker has accepted the message: a re-submit republishes such a job.
    enqueued_at      timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    next_attempt_at  timestamptz
);

-- Waiting work by queue and age: queue-depth gauges and the reconciler read this, not the table.
CREATE INDEX relayq_jobs_waiting ON relayq_jobs (queue, created_at)
    WHERE state IN ('queued', 'retrying');

-- Every run of a job, including duplicate deliveries that found the job already done.
CREATE TABLE relayq_job_attempts (
    job_id            text NOT NULL REFERENCES relayq_jobs (job_id) ON DELETE CASCADE,
    number            integer NOT NULL,
    worker            text NOT NULL,
    started_at        timestamptz NOT NULL,
    duration_seconds  double precision NOT NULL,
    outcome           text NOT NULL,
    error_type        text NOT NULL DEFAULT '',
    error_message     text NOT NULL DEFAULT '',
    countdown_seconds double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, number)
);
