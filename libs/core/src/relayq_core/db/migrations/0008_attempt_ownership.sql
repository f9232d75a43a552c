-- An attempt owns its job until it is recorded, and only the owner may record it
-- (worker_svc/runner.py, docs/reliability.md "Who may run a job").
--
-- * lease_until: how long the running attempt's worker may still be running it even when it no
--   longer holds the job's session lock (its database connection was cut: a PostgreSQL restart,
--   a network partition). A delivery that finds the job running and unheld takes it over only
--   once the lease has run out; the worker renews the lease while its handler runs, and stops
--   the handler (cancels it, or kills its own process) before the lease can run out unrenewed.
--   So no two attempts of one job ever run at once, even when the lock is gone.
-- * failures: the failed attempts of the job's current run (the retry budget used), kept here
--   rather than in the message, so a retry whose message is lost, duplicated or republished
--   keeps its place in the policy. A replay starts a new run (0).
-- * interruptions: attempts cut short in a row by the loss of their delivery's connection
--   (free, as an outage is not the job's fault), up to the claim's p_max_interruptions; beyond
--   that each counts as a worker loss, so a handler that costs its own connection (an
--   idle-in-transaction timeout, a query that crashes its backend) ends as a poison job instead
--   of running forever. Reset when an attempt is recorded.
-- * Every time is the database's clock (clock_timestamp(), not a worker's clock): a skewed
--   worker cannot move a retry earlier or a lease later.
--
-- Deploying: run this migration before starting workers of this version. Workers of the
-- previous version keep working meanwhile: their two-argument relayq_lock_and_claim (0006) is
-- left in place, and relayq_complete keeps its signature.
ALTER TABLE relayq_jobs ADD COLUMN lease_until timestamptz;
ALTER TABLE relayq_jobs ADD COLUMN failures integer NOT NULL DEFAULT 0;
ALTER TABLE relayq_jobs ADD COLUMN interruptions integer NOT NULL DEFAULT 0;

-- Unfinished jobs carry on with the budget their attempts so far used (as the reconciler
-- counted it: failed attempts with a countdown since the last terminal one).
UPDATE relayq_jobs j
SET failures = (
    SELECT count(*) FROM relayq_job_attempts a
    WHERE a.job_id = j.job_id AND a.outcome = 'failed' AND a.countdown_seconds > 0
      AND a.number > coalesce((SELECT max(t.number) FROM relayq_job_attempts t
                               WHERE t.job_id = j.job_id
                                 AND (t.outcome = 'dead_lettered'
                                      OR (t.outcome = 'failed' AND t.countdown_seconds = 0))),
                              0))
WHERE j.state IN ('queued', 'running', 'retrying');


-- Holds the job for this session (its advisory lock, as in 0006: the SELECT runs after the lock
-- is granted, and FOR UPDATE waits for a delivery that released the lock but has not committed),
-- then either claims it or says why not:
--   * no row: unknown, finished, or its dead letter is staged (the lock is held all the same);
--   * wait_seconds > 0, attempt NULL: not now. A retry whose time has not come (a duplicate or
--     early message: the backoff is kept), or a running job nobody holds whose lease has not
--     run out (its worker may still be running it: see lease_until above);
--   * otherwise the claim: attempt p_resuming resumed after a database outage is "interrupted"
--     (up to p_max_interruptions in a row); any other running job found here was abandoned by
--     a worker that died (a worker loss).
-- waited_seconds: how long the call waited for the lock and the row, so the worker can date
-- the lease from when it was taken. Waits at most lock_timeout (lock_not_available); the
-- caller then releases the advisory lock, which it may hold by then (the row wait comes after
-- it).
CREATE FUNCTION relayq_lock_and_claim(
    p_job_id text, p_resuming integer, p_lease_seconds double precision,
    p_max_interruptions integer
) RETURNS TABLE (
    attempt integer, losses integer, prev_state text, interrupted boolean, failures integer,
    started_at timestamptz, wait_seconds double precision, waited_seconds double precision
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    prev record;
    at timestamptz;
    waited double precision;
    resumed boolean;
BEGIN
    PERFORM pg_advisory_lock(hashtextextended(p_job_id, 0));
    SELECT j.state, j.attempt_count, j.pending_dead_letter IS NOT NULL AS staged,
           j.lease_until, j.next_attempt_at, j.interruptions
    INTO prev
    FROM relayq_jobs j WHERE j.job_id = p_job_id
    FOR UPDATE;
    IF NOT FOUND OR prev.staged OR prev.state IN ('succeeded', 'dead_lettered') THEN
        RETURN;
    END IF;
    -- Not now() (the statement's start, before the lock wait): the moment the row is ours.
    at := clock_timestamp();
    waited := extract(epoch FROM at - now());
    IF prev.state = 'retrying' AND prev.next_attempt_at > at THEN
        RETURN QUERY SELECT NULL::integer, NULL::integer, prev.state::text, false, NULL::integer,
            at, extract(epoch FROM prev.next_attempt_at - at)::double precision, waited;
        RETURN;
    END IF;
    IF prev.state = 'running' AND prev.lease_until > at
       AND prev.attempt_count IS DISTINCT FROM p_resuming THEN
        RETURN QUERY SELECT NULL::integer, NULL::integer, prev.state::text, false, NULL::integer,
            at, extract(epoch FROM prev.lease_until - at)::double precision, waited;
        RETURN;
    END IF;
    -- Resuming the attempt a connection loss cut short: free up to p_max_interruptions in a row.
    resumed := coalesce(prev.state = 'running' AND prev.attempt_count = p_resuming
        AND prev.interruptions < p_max_interruptions, false);
    RETURN QUERY
    UPDATE relayq_jobs j
    SET state = 'running', attempt_count = j.attempt_count + 1,
        worker_losses = j.worker_losses + (prev.state = 'running' AND NOT resumed)::int,
        interruptions = CASE WHEN resumed THEN j.interruptions + 1 ELSE j.interruptions END,
        updated_at = at, started_at = coalesce(j.started_at, at), next_attempt_at = NULL,
        lease_until = at + make_interval(secs => p_lease_seconds)
    WHERE j.job_id = p_job_id
    RETURNING j.attempt_count, j.worker_losses, prev.state::text, resumed, j.failures, at,
        0::double precision, waited;
END
$$;

-- Success and its attempt, only from the attempt that owns the job (still running it, under the
-- same number): otherwise raises RQ001 (the attempt was superseded, e.g. recorded as timed out
-- by its worker's supervisor) and, inside the handler's transaction, its effects roll back with
-- it. With p_unlock, also releases the job's lock (as in 0006: only from a statement that
-- commits on its own).
CREATE OR REPLACE FUNCTION relayq_complete(
    p_job_id text, p_result jsonb, p_number integer, p_worker text, p_started_at timestamptz,
    p_duration double precision, p_unlock boolean
) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    UPDATE relayq_jobs
    SET state = 'succeeded', result = p_result, last_error = NULL, updated_at = now(),
        finished_at = now(), next_attempt_at = NULL, lease_until = NULL, interruptions = 0
    WHERE job_id = p_job_id AND state = 'running' AND attempt_count = p_number;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'attempt % of job % no longer owns the job', p_number, p_job_id
            USING ERRCODE = 'RQ001';
    END IF;
    INSERT INTO relayq_job_attempts
        (job_id, number, worker, started_at, duration_seconds, outcome)
    VALUES (p_job_id, p_number, p_worker, p_started_at, p_duration, 'succeeded')
    ON CONFLICT (job_id, number) DO UPDATE
    SET worker = EXCLUDED.worker, started_at = EXCLUDED.started_at,
        duration_seconds = EXCLUDED.duration_seconds, outcome = EXCLUDED.outcome,
        error_type = '', error_message = '', countdown_seconds = 0;
    IF p_unlock THEN
        PERFORM pg_advisory_unlock(hashtextextended(p_job_id, 0));
    END IF;
END
$$;

-- A failed attempt and what follows it, in one statement, only from the attempt that owns the
-- job (else RQ001, as relayq_complete): with p_dead_letter NULL, a retry due p_countdown seconds
-- from now by the database's clock (returned); otherwise the dead letter is staged (with the
-- database's time as dead_lettered_at) until dlq-svc has stored it, and NULL is returned.
-- p_counted: the attempt uses the retry budget (failures + 1). p_outcome is the attempt's
-- outcome ('failed', 'timed_out', or 'dead_lettered' for a poison job that did not run).
CREATE FUNCTION relayq_settle_failure(
    p_job_id text, p_number integer, p_outcome text, p_worker text, p_started_at timestamptz,
    p_duration double precision, p_error_type text, p_error_message text,
    p_countdown double precision, p_dead_letter jsonb, p_error text, p_counted boolean
) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    due timestamptz;
BEGIN
    IF p_dead_letter IS NULL THEN
        due := clock_timestamp() + make_interval(secs => p_countdown);
    END IF;
    UPDATE relayq_jobs
    SET state = 'retrying', last_error = p_error, next_attempt_at = due, updated_at = now(),
        lease_until = NULL, failures = failures + p_counted::int, interruptions = 0,
        pending_dead_letter = CASE WHEN p_dead_letter IS NULL THEN NULL
            ELSE p_dead_letter || jsonb_build_object('dead_lettered_at', clock_timestamp()) END
    WHERE job_id = p_job_id AND state = 'running' AND attempt_count = p_number;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'attempt % of job % no longer owns the job', p_number, p_job_id
            USING ERRCODE = 'RQ001';
    END IF;
    INSERT INTO relayq_job_attempts (job_id, number, worker, started_at, duration_seconds,
                                     outcome, error_type, error_message, countdown_seconds)
    VALUES (p_job_id, p_number, p_worker, p_started_at, p_duration, p_outcome, p_error_type,
            p_error_message, CASE WHEN p_dead_letter IS NULL THEN p_countdown ELSE 0 END)
    ON CONFLICT (job_id, number) DO UPDATE
    SET worker = EXCLUDED.worker, started_at = EXCLUDED.started_at,
        duration_seconds = EXCLUDED.duration_seconds, outcome = EXCLUDED.outcome,
        error_type = EXCLUDED.error_type, error_message = EXCLUDED.error_message,
        countdown_seconds = EXCLUDED.countdown_seconds;
    RETURN due;
END
$$;
