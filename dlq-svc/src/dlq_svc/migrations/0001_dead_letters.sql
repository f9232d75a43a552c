-- dlq-svc's store: one entry per dead-lettered job, every dead-lettering of it, and an audit
-- trail. Owned by dlq-svc alone. Replay and drop only change an entry's status; the only
-- deletion is the explicit purge of dropped entries (which takes their history and audit along).

-- Error-text search (ILIKE '%...%') uses a trigram index; pg_trgm is a trusted contrib
-- extension (PostgreSQL 13+), so the database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE dlq_entries (
    -- The entry's id is the job's id: one entry per job, however often it is dead-lettered.
    job_id            text PRIMARY KEY,
    idempotency_key   text NOT NULL,
    task              text NOT NULL,
    queue             text NOT NULL,
    payload           jsonb NOT NULL,
    reason            text NOT NULL
                      CHECK (reason IN ('retries_exhausted', 'permanent_error', 'worker_lost')),
    error_type        text NOT NULL DEFAULT '',
    error_message     text NOT NULL DEFAULT '',
    traceback         text NOT NULL DEFAULT '',
    -- Every attempt of the job (number, worker, start, duration, outcome, error, countdown), as
    -- the latest report listed them: replaced, not appended, by a newer dead-lettering.
    attempts          jsonb NOT NULL DEFAULT '[]',
    trace_id          text NOT NULL DEFAULT '',
    first_failed_at   timestamptz NOT NULL,
    dead_lettered_at  timestamptz NOT NULL,
    -- The attempt that dead-lettered the job most recently: a late report of an older
    -- dead-lettering is kept in the history but does not overwrite newer fields.
    final_attempt     integer NOT NULL,
    status            text NOT NULL DEFAULT 'active'
                      CHECK (status IN ('active', 'replayed', 'dropped')),
    dead_letter_count integer NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    dropped_at        timestamptz,
    CHECK ((status = 'dropped') = (dropped_at IS NOT NULL))
);

-- Newest first (keyset pagination on (dead_lettered_at, job_id)), overall and per filter.
CREATE INDEX dlq_entries_newest ON dlq_entries (dead_lettered_at DESC, job_id DESC);
CREATE INDEX dlq_entries_status_newest ON dlq_entries (status, dead_lettered_at DESC, job_id DESC);
CREATE INDEX dlq_entries_task_newest ON dlq_entries (task, dead_lettered_at DESC, job_id DESC);
CREATE INDEX dlq_entries_reason_newest ON dlq_entries (reason, dead_lettered_at DESC, job_id DESC);
-- error_contains matches "error_type: error_message" case-insensitively.
CREATE INDEX dlq_entries_error_trgm ON dlq_entries
    USING gin ((error_type || ': ' || error_message) gin_trgm_ops);
-- The purge looks for old drops only.
CREATE INDEX dlq_entries_dropped ON dlq_entries (dropped_at) WHERE status = 'dropped';

-- Every dead-lettering of a job. (job_id, final_attempt) is what makes ReportDeadLetter
-- idempotent: a retried report of the same dead-lettering conflicts here and changes nothing.
-- The foreign key is checked at commit: a report records its history row before its entry.
CREATE TABLE dlq_dead_letterings (
    job_id           text NOT NULL REFERENCES dlq_entries (job_id) ON DELETE CASCADE
                     DEFERRABLE INITIALLY DEFERRED,
    final_attempt    integer NOT NULL,
    reason           text NOT NULL,
    error_type       text NOT NULL DEFAULT '',
    error_message    text NOT NULL DEFAULT '',
    traceback        text NOT NULL DEFAULT '',
    worker           text NOT NULL DEFAULT '',
    trace_id         text NOT NULL DEFAULT '',
    dead_lettered_at timestamptz NOT NULL,
    reported_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, final_attempt)
);

-- What happened to each entry, by whom and why: dead_lettered, replayed, dropped.
CREATE TABLE dlq_audit (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id  text NOT NULL REFERENCES dlq_entries (job_id) ON DELETE CASCADE
            DEFERRABLE INITIALLY DEFERRED,
    action  text NOT NULL CHECK (action IN ('dead_lettered', 'replayed', 'dropped')),
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    reason  text NOT NULL DEFAULT '',
    result  text NOT NULL DEFAULT ''
);

CREATE INDEX dlq_audit_job ON dlq_audit (job_id, id);
