-- The replay's own statements (dlq_svc/replay.py); they run in the replay's transaction.

-- name: set_lock_timeout
-- For this transaction only: how long to wait for the job's lock.
SELECT set_config('lock_timeout', $1, true);
