-- The job ledger's queries (libs/core/src/relayq_core/db/ledger.py runs them by name).

-- name: insert_jobs
-- A batch of submissions in one round trip; a row whose job_id or idempotency_key exists is
-- skipped (the unique constraints decide, not a prior SELECT) and not returned.
INSERT INTO relayq_jobs (job_id, idempotency_key, task, queue, payload, fingerprint, trace_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::bytea[],
                     $7::text[])
ON CONFLICT DO NOTHING
RETURNING job_id;

-- name: find_existing
-- The recorded jobs that hold any of these keys or job ids.
SELECT job_id, idempotency_key, task, queue, fingerprint, state
FROM relayq_jobs
WHERE idempotency_key = ANY($1::text[]) OR job_id = ANY($2::text[]);

-- name: mark_enqueued
-- The broker has these jobs' messages (ingest's outbox pushed them; written in batches).
UPDATE relayq_jobs SET enqueued_at = now()
WHERE job_id = ANY($1::text[]) AND enqueued_at IS NULL;

-- name: get_job
SELECT * FROM relayq_jobs WHERE job_id = $1;

-- name: get_attempts
SELECT * FROM relayq_job_attempts WHERE job_id = $1 ORDER BY number;

-- name: lock_job
-- Serialises deliveries of one job for the whole of a delivery (claim, run, record). A session
-- lock: PostgreSQL releases it when the worker's connection dies, so a second delivery waiting
-- here proceeds exactly when the first can no longer finish. Waits at most lock_timeout.
SELECT pg_advisory_lock(hashtextextended($1, 0));

-- name: unlock_job
SELECT pg_advisory_unlock(hashtextextended($1, 0));

-- name: lock_and_claim
-- A delivery holds the job (lock_job) and starts an attempt with a lease of $3 seconds, in one
-- round trip: see relayq_lock_and_claim (migrations 0006 and 0008) for why the claim must follow
-- the lock inside a function. No row: the job is finished, waiting for its dead letter to be
-- stored, or unknown; wait_seconds > 0: not now (a retry not yet due, or another attempt's lease
-- still running). The lock is held all the same.
SELECT attempt, losses, prev_state, interrupted, failures, started_at, wait_seconds,
       waited_seconds
FROM relayq_lock_and_claim($1, $2::int, $3::float8, $4::int);

-- name: claim_unsafely
-- TEST ONLY (RELAYQ_WORKER_UNSAFE_SKIP_CLAIM): starts an attempt without the job's lock and
-- without asking whether the job already finished, so that a duplicate delivery runs the job
-- again. It exists to prove that the audits catch double applications (tests/); no production
-- path uses it.
UPDATE relayq_jobs
SET state = 'running', attempt_count = attempt_count + 1, updated_at = now(),
    next_attempt_at = NULL, lease_until = now() + make_interval(secs => $2)
WHERE job_id = $1
RETURNING attempt_count AS attempt, worker_losses AS losses, 'queued' AS prev_state,
    false AS interrupted, failures, now() AS started_at, 0::float8 AS wait_seconds,
    0::float8 AS waited_seconds;

-- name: renew_lease
-- The running attempt $2 of job $1 extends its lease to $3 seconds from now, only while the
-- session $4 (the delivery's own connection) still holds the job's lock: a lock lost with that
-- connection (a PostgreSQL restart, a partition) ends the lease too. No row: not renewed.
UPDATE relayq_jobs SET lease_until = clock_timestamp() + make_interval(secs => $3)
WHERE job_id = $1 AND state = 'running' AND attempt_count = $2
  AND EXISTS (
      SELECT 1 FROM pg_locks l
      WHERE l.locktype = 'advisory' AND l.granted AND l.pid = $4 AND l.objsubid = 1
        AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  )
RETURNING lease_until;

-- name: settle_failure
-- A failed attempt and the retry or staged dead letter that follows it (see
-- relayq_settle_failure, migration 0008); raises RQ001 when the attempt no longer owns the job.
SELECT relayq_settle_failure($1, $2, $3, $4, $5, $6, $7, $8, $9::float8, $10::jsonb, $11, $12)
    AS due;

-- name: record_duplicate
-- A delivery of a job that is already finished: counted, nothing else changes.
UPDATE relayq_jobs SET duplicate_deliveries = duplicate_deliveries + 1
WHERE job_id = $1
RETURNING state, result;

-- name: purge_finished
-- Retention: finished jobs (and with them their idempotency keys and attempts) older than the
-- cutoff, at most $2 per call so a large purge never holds long locks.
DELETE FROM relayq_jobs
WHERE job_id IN (
    SELECT job_id FROM relayq_jobs
    WHERE state IN ('succeeded', 'dead_lettered') AND finished_at < $1
    LIMIT $2
);

-- name: peek_state
SELECT state, attempt_count, result, pending_dead_letter FROM relayq_jobs WHERE job_id = $1;

-- name: mark_dead_lettered
-- dlq-svc stored the dead letter of attempt $2: now, and only now, the job is dead-lettered.
-- Only that dead letter: a slow hand-off must not mark a newer one (after a replay) as stored.
UPDATE relayq_jobs
SET state = 'dead_lettered', pending_dead_letter = NULL, finished_at = now(), updated_at = now()
WHERE job_id = $1 AND pending_dead_letter IS NOT NULL
  AND (pending_dead_letter->>'final_attempt')::int = $2;

-- name: complete
-- Success and its attempt in one round trip, only from the attempt that owns the job (else
-- RQ001); $7 also releases the job's lock (only from a statement that commits on its own: see
-- relayq_complete, migrations 0006 and 0008).
SELECT relayq_complete($1, $2::jsonb, $3, $4, $5, $6, $7);

-- name: fail
-- $2 is 'retrying' (with $4 the next attempt's time) or 'dead_lettered'. (Tests and tools; a
-- worker records a failed attempt with settle_failure.)
UPDATE relayq_jobs
SET state = $2, last_error = $3, next_attempt_at = $4, updated_at = now(),
    finished_at = CASE WHEN $2 = 'dead_lettered' THEN now() ELSE NULL END
WHERE job_id = $1;

-- name: record_attempt
INSERT INTO relayq_job_attempts (job_id, number, worker, started_at, duration_seconds, outcome,
                                 error_type, error_message, countdown_seconds)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (job_id, number) DO UPDATE
SET worker = EXCLUDED.worker, started_at = EXCLUDED.started_at,
    duration_seconds = EXCLUDED.duration_seconds, outcome = EXCLUDED.outcome,
    error_type = EXCLUDED.error_type, error_message = EXCLUDED.error_message,
    countdown_seconds = EXCLUDED.countdown_seconds;

-- name: reopen_for_replay
-- A replay from the DLQ: the dead-lettered job is queued again under its original job_id and
-- idempotency key. A job that meanwhile succeeded is left alone (and not returned).
UPDATE relayq_jobs
SET state = 'queued', enqueued_at = NULL, next_attempt_at = NULL, finished_at = NULL,
    worker_losses = 0, failures = 0, interruptions = 0, lease_until = NULL,
    pending_dead_letter = NULL,
    updated_at = now()
WHERE job_id = ANY($1::text[]) AND state IN ('dead_lettered', 'queued')
RETURNING job_id, idempotency_key, task, queue, payload, trace_id;

-- name: oldest_queued
-- When the oldest job still waiting in queue $1 entered it (NULL: none waiting). One probe of
-- relayq_jobs_queued_since.
SELECT min(enqueued_at) AS since FROM relayq_jobs
WHERE queue = $1 AND state = 'queued' AND enqueued_at IS NOT NULL;

-- name: touch_staged_dead_letter
-- A worker is still trying to hand this staged dead letter to dlq-svc: the reconciler leaves a
-- dead letter alone while someone keeps touching it.
UPDATE relayq_jobs SET updated_at = now()
WHERE job_id = $1 AND pending_dead_letter IS NOT NULL;

-- The reconciler (relayq_core/reconcile.py). Each requeue_* query claims at most its last
-- parameter's number of jobs whose message the broker may have lost, oldest first, and returns
-- what re-publishing them needs. Claiming bumps the timestamps the query selects on, so a job
-- is re-published once per incident, and the caller publishes inside the same transaction: a
-- publish that fails rolls the claim back and the next cycle tries again. Rows a worker holds
-- (SKIP LOCKED) are being run right now, not lost. "failures" is how many retries the job's
-- current run has used (the ledger keeps it; the message's copy is informational). "Before $2" conditions take the
-- moment at or after which the queue was seen consumed past every message it then held.

-- name: reconcile_now
SELECT now() AS now;

-- name: requeue_queued_before
-- Queued jobs of queue $1 whose message the broker held before $2 and no longer holds: Redis
-- lost its data at or before $2, or its list has been consumed past every message it held at
-- $2 while these jobs stayed queued.
WITH picked AS (
    SELECT job_id FROM relayq_jobs
    WHERE queue = $1 AND state = 'queued' AND enqueued_at IS NOT NULL AND enqueued_at < $2
    ORDER BY enqueued_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE relayq_jobs j SET enqueued_at = now(), updated_at = now()
FROM picked
WHERE j.job_id = picked.job_id
RETURNING j.job_id, j.idempotency_key, j.task, j.queue, j.payload, j.trace_id, 0 AS failures;

-- name: requeue_lost_retries
-- Retries of queue $1 scheduled before $2 (so their message has left the list: a worker holds
-- it in memory until it is due, as an ETA message) and due more than $3 seconds ago: the worker
-- holding the message died or reconnected (Celery drops held ETA messages on a broker
-- reconnect), or Redis lost it.
WITH picked AS (
    SELECT job_id FROM relayq_jobs
    WHERE queue = $1 AND state = 'retrying' AND pending_dead_letter IS NULL
      AND updated_at < $2 AND next_attempt_at < now() - make_interval(secs => $3)
    ORDER BY next_attempt_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE relayq_jobs j SET next_attempt_at = now(), enqueued_at = now(), updated_at = now()
FROM picked
WHERE j.job_id = picked.job_id
RETURNING j.job_id, j.idempotency_key, j.task, j.queue, j.payload, j.trace_id, j.failures;

-- name: unheld_running
-- Jobs "running" for more than $1 seconds whose delivery no longer holds the job's session
-- lock (lock_job): a live delivery always holds it, from before its claim until its outcome is
-- recorded, so their worker died (or lost its database connection), and whose lease has run out
-- (a worker cut off from the database stops its handler before then). At most $2.
WITH held AS (
    SELECT (l.classid::bigint << 32) | l.objid::bigint AS key
    FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT job_id, queue, extract(epoch FROM now() - updated_at)::float8 AS waited_seconds
FROM relayq_jobs
WHERE state = 'running' AND updated_at < now() - make_interval(secs => $1)
  AND (lease_until IS NULL OR lease_until < now())
  AND hashtextextended(job_id, 0) NOT IN (SELECT key FROM held)
ORDER BY updated_at
LIMIT $2;

-- name: requeue_abandoned
-- Of the jobs $1 (seen unheld before $2, when a dying worker's message had been handed back to
-- the list if Celery could), those still running, still unheld and untouched since.
WITH held AS (
    SELECT (l.classid::bigint << 32) | l.objid::bigint AS key
    FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
), picked AS (
    SELECT job_id FROM relayq_jobs
    WHERE job_id = ANY($1::text[]) AND state = 'running' AND updated_at < $2
      AND (lease_until IS NULL OR lease_until < now())
      AND hashtextextended(job_id, 0) NOT IN (SELECT key FROM held)
    ORDER BY updated_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE relayq_jobs j SET enqueued_at = now(), updated_at = now()
FROM picked
WHERE j.job_id = picked.job_id
RETURNING j.job_id, j.idempotency_key, j.task, j.queue, j.payload, j.trace_id, j.failures;

-- name: requeue_stalled_dead_letters
-- Staged dead letters of queue $1 last touched before $2 and more than $3 seconds ago (workers
-- touch the row on every failed report, and their next report waits at most a minute): the
-- message carrying the hand-off is lost. Its next delivery only sends the staged report; the
-- handler does not run again.
WITH picked AS (
    SELECT job_id FROM relayq_jobs
    WHERE queue = $1 AND pending_dead_letter IS NOT NULL AND state = 'retrying'
      AND updated_at < $2 AND updated_at < now() - make_interval(secs => $3)
    ORDER BY updated_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE relayq_jobs j SET enqueued_at = now(), updated_at = now()
FROM picked
WHERE j.job_id = picked.job_id
RETURNING j.job_id, j.idempotency_key, j.task, j.queue, j.payload, j.trace_id, 0 AS failures;

-- name: requeue_unpublished
-- Submits recorded more than $1 seconds ago that ingest never published: it died with them in
-- its outbox, or left them to this rule (Redis down longer than the outbox's max age, or its
-- backlog full).
WITH picked AS (
    SELECT job_id FROM relayq_jobs
    WHERE state = 'queued' AND enqueued_at IS NULL
      AND updated_at < now() - make_interval(secs => $1)
    ORDER BY updated_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE relayq_jobs j SET enqueued_at = now(), updated_at = now()
FROM picked
WHERE j.job_id = picked.job_id
RETURNING j.job_id, j.idempotency_key, j.task, j.queue, j.payload, j.trace_id, 0 AS failures;

-- name: overdue_unpublished
-- relayq_reconciler_overdue_*{reason="never_published"}: submits older than $1 seconds still
-- not published (what requeue_unpublished would take), how many (counted up to $2) and how long
-- the oldest has waited since it was submitted. One range of relayq_jobs_unpublished.
SELECT count(*) AS jobs, coalesce(extract(epoch FROM now() - min(updated_at)), 0)::float8
    AS oldest_seconds
FROM (
    SELECT updated_at FROM relayq_jobs
    WHERE state = 'queued' AND enqueued_at IS NULL
      AND updated_at < now() - make_interval(secs => $1)
    ORDER BY updated_at
    LIMIT $2
) overdue;

-- name: overdue_retries
-- relayq_reconciler_overdue_*{reason="retry_lost"}: retries due more than $1 seconds ago and
-- not started (lost, or stuck behind a backlog: late either way), how many (up to $2) and how
-- long the oldest has been due. One range of relayq_jobs_retry_due.
SELECT count(*) AS jobs, coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)::float8
    AS oldest_seconds
FROM (
    SELECT next_attempt_at FROM relayq_jobs
    WHERE state = 'retrying' AND pending_dead_letter IS NULL
      AND next_attempt_at < now() - make_interval(secs => $1)
    ORDER BY next_attempt_at
    LIMIT $2
) overdue;

-- name: continue_attempt_numbering
-- A replay re-created a job the ledger had purged: its attempts continue from the dead letter's
-- last one instead of starting again at 1, so a new dead-lettering carries a higher
-- final_attempt and is never mistaken for a repeat of an old report (the DLQ's idempotency
-- key is (job_id, final_attempt)).
UPDATE relayq_jobs SET attempt_count = $2
WHERE job_id = $1 AND attempt_count < $2;

-- name: waiting_jobs
-- relayq-ledger waiting: the unfinished jobs, longest waiting first, at most $1: what an incident
-- delays, by id. "waited" counts from the submit, or for a retry from when it fell due. (A scan
-- of the unfinished rows, sorted: an operator's command, not a scrape.)
SELECT job_id, idempotency_key, task, queue, state, enqueued_at IS NOT NULL AS published,
       extract(epoch FROM now() - CASE WHEN state = 'retrying' THEN next_attempt_at
                                       ELSE created_at END)::float8 AS waited_seconds
FROM relayq_jobs
WHERE state IN ('queued', 'retrying', 'running')
ORDER BY waited_seconds DESC
LIMIT $1;

-- name: counts_by_queue_and_state
-- relayq-ledger stats: the whole ledger by queue and state (an index-only scan is not possible
-- here; this is an operator's command, not a scrape).
SELECT queue, state, count(*) AS count FROM relayq_jobs GROUP BY queue, state
ORDER BY queue, state;

-- name: attention_counts
-- relayq-ledger stats: jobs an operator looks at first.
SELECT
    count(*) FILTER (WHERE pending_dead_letter IS NOT NULL) AS dead_letters_waiting_for_dlq,
    count(*) FILTER (WHERE state = 'retrying' AND next_attempt_at < now() - interval '1 minute')
        AS retries_overdue,
    count(*) FILTER (WHERE state = 'queued' AND enqueued_at IS NULL
                     AND created_at < now() - interval '1 minute') AS never_enqueued,
    count(*) FILTER (WHERE worker_losses > 0 AND state NOT IN ('succeeded', 'dead_lettered'))
        AS unfinished_with_worker_losses
FROM relayq_jobs
WHERE state NOT IN ('succeeded', 'dead_lettered');
