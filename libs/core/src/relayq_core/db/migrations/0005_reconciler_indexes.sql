-- The reconciler's probes (relayq_core/reconcile.py): each one an index range scan over the few
-- rows it may act on, never over the backlog or the history. Partial indexes: a row is in one
-- only while it is in that state (one extra index entry per job for "running").
-- Retries whose next attempt is overdue (the worker holding the retry died, or Redis lost it).
CREATE INDEX relayq_jobs_retry_due ON relayq_jobs (next_attempt_at)
    WHERE state = 'retrying';

-- Deliveries left "running" by a worker that died.
CREATE INDEX relayq_jobs_running_since ON relayq_jobs (updated_at)
    WHERE state = 'running';

-- Dead letters staged in the ledger that dlq-svc has not stored yet.
CREATE INDEX relayq_jobs_dead_letter_staged ON relayq_jobs (updated_at)
    WHERE pending_dead_letter IS NOT NULL;

-- Submits whose message never reached the broker (ingest died between the two steps).
CREATE INDEX relayq_jobs_unpublished ON relayq_jobs (updated_at)
    WHERE state = 'queued' AND enqueued_at IS NULL;
