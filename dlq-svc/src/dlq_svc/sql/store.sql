-- dlq-svc's queries (dlq_svc/store.py runs them by name). Filters take the same six parameters
-- everywhere: $1 task, $2 reason, $3 status, $4 since, $5 until, $6 an ILIKE pattern for
-- "error_type: error_message" (wildcards in the user's text already escaped); NULL = no filter.

-- name: insert_history
-- A retried report of the same dead-lettering conflicts here and returns nothing: a duplicate.
-- Concurrent identical reports queue on the unique index; exactly one inserts.
INSERT INTO dlq_dead_letterings (job_id, final_attempt, reason, error_type, error_message,
                                 traceback, worker, trace_id, dead_lettered_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (job_id, final_attempt) DO NOTHING
RETURNING job_id;

-- name: insert_entry
-- The first dead-lettering of a job; nothing when the job already has an entry.
INSERT INTO dlq_entries (job_id, idempotency_key, task, queue, payload, reason, error_type,
                         error_message, traceback, attempts, trace_id, first_failed_at,
                         dead_lettered_at, final_attempt)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (job_id) DO NOTHING
RETURNING job_id;

-- name: lock_entry
SELECT status, final_attempt, attempts FROM dlq_entries WHERE job_id = $1 FOR UPDATE;

-- name: reactivate_entry
-- A newer dead-lettering of a job that has an entry (typically: it failed again after a
-- replay): the same entry becomes active again with the newest error and every attempt ($6,
-- merged by number with those stored).
UPDATE dlq_entries
SET reason = $2, error_type = $3, error_message = $4, traceback = $5, attempts = $6,
    trace_id = CASE WHEN $7 = '' THEN trace_id ELSE $7 END,
    first_failed_at = least(first_failed_at, $8), dead_lettered_at = $9, final_attempt = $10,
    status = 'active', dropped_at = NULL, dead_letter_count = dead_letter_count + 1,
    updated_at = now()
WHERE job_id = $1;

-- name: count_late_dead_lettering
-- A late report of an older dead-lettering: counted and kept in the history, fields untouched.
UPDATE dlq_entries SET dead_letter_count = dead_letter_count + 1, updated_at = now()
WHERE job_id = $1;

-- name: insert_audit
INSERT INTO dlq_audit (job_id, action, actor, reason, result) VALUES ($1, $2, $3, $4, $5);

-- name: get_entry
SELECT * FROM dlq_entries WHERE job_id = $1;

-- name: get_audit
SELECT action, at, actor, reason, result FROM dlq_audit WHERE job_id = $1 ORDER BY id;

-- name: list_entries
-- Newest first; $7/$8 is the keyset cursor (the last row of the previous page), $9 the limit.
-- No traceback: listings stay small (GetDeadLetter has it).
SELECT job_id, idempotency_key, task, queue, payload, reason, error_type, error_message,
       '' AS traceback, attempts, trace_id, first_failed_at, dead_lettered_at, final_attempt,
       status, dead_letter_count, created_at, updated_at, dropped_at
FROM dlq_entries
WHERE ($1::text IS NULL OR task = $1)
  AND ($2::text IS NULL OR reason = $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($4::timestamptz IS NULL OR dead_lettered_at >= $4)
  AND ($5::timestamptz IS NULL OR dead_lettered_at < $5)
  AND ($6::text IS NULL OR (error_type || ': ' || error_message) ILIKE $6)
  AND ($7::timestamptz IS NULL OR (dead_lettered_at, job_id) < ($7, $8::text))
ORDER BY dead_lettered_at DESC, job_id DESC
LIMIT $9;

-- name: select_refs
-- The entries a bulk replay or drop by filter works on, oldest first.
SELECT job_id, idempotency_key, task, status
FROM dlq_entries
WHERE ($1::text IS NULL OR task = $1)
  AND ($2::text IS NULL OR reason = $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($4::timestamptz IS NULL OR dead_lettered_at >= $4)
  AND ($5::timestamptz IS NULL OR dead_lettered_at < $5)
  AND ($6::text IS NULL OR (error_type || ': ' || error_message) ILIKE $6)
ORDER BY dead_lettered_at, job_id;

-- name: find_refs
SELECT job_id, idempotency_key, task, status FROM dlq_entries WHERE job_id = ANY($1::text[]);

-- name: stats_by_status
SELECT status AS key, count(*) AS count FROM dlq_entries GROUP BY status;

-- name: stats_active_by_task
SELECT task AS key, count(*) AS count FROM dlq_entries WHERE status = 'active'
GROUP BY task ORDER BY count(*) DESC, task;

-- name: stats_active_by_reason
SELECT reason AS key, count(*) AS count FROM dlq_entries WHERE status = 'active'
GROUP BY reason ORDER BY count(*) DESC, reason;

-- name: stats_active_by_task_reason
-- The relayq_dlq_depth{task,reason} gauge (metrics-gateway).
SELECT task, reason, count(*) AS count FROM dlq_entries WHERE status = 'active'
GROUP BY task, reason ORDER BY task, reason;

-- name: oldest_active
SELECT job_id, dead_lettered_at FROM dlq_entries WHERE status = 'active'
ORDER BY dead_lettered_at, job_id LIMIT 1;

-- name: lock_for_replay
-- Held until the replay of this entry commits: a concurrent replay of the same entry waits
-- here, then finds it no longer active.
SELECT * FROM dlq_entries WHERE job_id = $1 FOR UPDATE;

-- name: release_session_locks
SELECT pg_advisory_unlock_all();

-- name: mark_replayed
UPDATE dlq_entries SET status = 'replayed', updated_at = now() WHERE job_id = $1;

-- name: drop_entries
-- Only active entries are dropped (a concurrent replay holds the row; this waits, then skips
-- it). Each drop gets its audit record in the same statement.
WITH dropped AS (
    UPDATE dlq_entries SET status = 'dropped', dropped_at = now(), updated_at = now()
    WHERE job_id = ANY($1::text[]) AND status = 'active'
    RETURNING job_id, idempotency_key, task, status
), audited AS (
    INSERT INTO dlq_audit (job_id, action, actor, reason, result)
    SELECT job_id, 'dropped', $2, $3, 'dropped' FROM dropped
)
SELECT * FROM dropped;

-- name: purge_dropped
-- Dropped entries whose drop is older than $1, at most $2 per call (short locks); their
-- history and audit rows go with them (ON DELETE CASCADE).
DELETE FROM dlq_entries
WHERE job_id IN (
    SELECT job_id FROM dlq_entries
    WHERE status = 'dropped' AND dropped_at < $1
    LIMIT $2
);

-- name: count_purgeable
SELECT count(*) FROM dlq_entries WHERE status = 'dropped' AND dropped_at < $1;
