-- The replay's own statements (dlq_svc/replay.py); they run in the replay's transaction.

-- name: set_lock_timeout
-- For this transaction only: how long to wait for the job's lock.
SELECT set_config('lock_timeout', $1, true);

-- name: continue_attempt_numbering
-- The one statement dlq-svc runs on the job ledger outside relayq_core's JobLedger (it belongs
-- there; until it moves, it lives here).
-- A replay re-created a job the ledger had purged: its attempts continue from the dead
-- letter's last one instead of starting again at 1. A new dead-lettering then carries a higher
-- final_attempt, so it can never be mistaken for a repeat of an old report (the DLQ's
-- idempotency key is (job_id, final_attempt)).
UPDATE relayq_jobs SET attempt_count = $2
WHERE job_id = $1 AND attempt_count < $2;
