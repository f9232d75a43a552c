-- The delivery protocol's two hot steps (worker_svc/runner.py), one round trip each instead of
-- three (docs/benchmarks.md: round trips were most of a worker's database cost per job).

-- Holds the job for this session, then claims it: lock_job and claim of ledger.sql in one call.
-- A claim must see every delivery that finished before the lock was granted, so it cannot be a
-- statement that waits for the lock (its snapshot would predate the wait). Inside a VOLATILE
-- function each statement takes a fresh snapshot: the SELECT below runs after the lock is
-- granted, and FOR UPDATE also waits for a delivery that released the lock but has not yet
-- committed (relayq_complete releases it inside the outcome's statement). Returns no row when
-- the job is unknown, finished, or waiting for its dead letter to be stored; the lock is held
-- all the same. Waits at most lock_timeout (lock_not_available: the caller defers).
CREATE FUNCTION relayq_lock_and_claim(p_job_id text, p_resuming integer)
RETURNS TABLE (attempt integer, losses integer, prev_state text, interrupted boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    prev record;
BEGIN
    PERFORM pg_advisory_lock(hashtextextended(p_job_id, 0));
    SELECT j.state, j.attempt_count, j.pending_dead_letter IS NOT NULL AS staged
    INTO prev
    FROM relayq_jobs j WHERE j.job_id = p_job_id
    FOR UPDATE;
    IF NOT FOUND OR prev.staged OR prev.state IN ('succeeded', 'dead_lettered') THEN
        RETURN;
    END IF;
    -- A job found 'running' was abandoned by a delivery whose worker died (it no longer holds
    -- the lock): a worker loss, unless this delivery resumes attempt p_resuming, which lost its
    -- database connection (an outage, not a dying worker: "interrupted").
    RETURN QUERY
    UPDATE relayq_jobs j
    SET state = 'running', attempt_count = j.attempt_count + 1,
        worker_losses = j.worker_losses
            + (prev.state = 'running' AND prev.attempt_count IS DISTINCT FROM p_resuming)::int,
        updated_at = now(), started_at = coalesce(j.started_at, now()), next_attempt_at = NULL
    WHERE j.job_id = p_job_id
    RETURNING j.attempt_count, j.worker_losses, prev.state::text,
        (prev.state = 'running' AND prev.attempt_count = p_resuming);
END
$$;

-- Success and its attempt (complete of ledger.sql); with p_unlock, also releases the job's lock.
-- Releasing it before the statement commits is safe: the next delivery's relayq_lock_and_claim
-- then waits on this row (FOR UPDATE) until the commit and finds the job succeeded. Only a
-- statement that commits on its own may release (a handler's transaction could still fail at
-- COMMIT, and the lock must outlive that).
CREATE FUNCTION relayq_complete(
    p_job_id text, p_result jsonb, p_number integer, p_worker text, p_started_at timestamptz,
    p_duration double precision, p_unlock boolean
) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE relayq_jobs
    SET state = 'succeeded', result = p_result, last_error = NULL, updated_at = now(),
        finished_at = now(), next_attempt_at = NULL
    WHERE job_id = p_job_id;
    IF FOUND THEN
        INSERT INTO relayq_job_attempts
            (job_id, number, worker, started_at, duration_seconds, outcome)
        VALUES (p_job_id, p_number, p_worker, p_started_at, p_duration, 'succeeded')
        ON CONFLICT (job_id, number) DO UPDATE
        SET worker = EXCLUDED.worker, started_at = EXCLUDED.started_at,
            duration_seconds = EXCLUDED.duration_seconds, outcome = EXCLUDED.outcome,
            error_type = '', error_message = '', countdown_seconds = 0;
    END IF;
    IF p_unlock THEN
        PERFORM pg_advisory_unlock(hashtextextended(p_job_id, 0));
    END IF;
END
$$;
