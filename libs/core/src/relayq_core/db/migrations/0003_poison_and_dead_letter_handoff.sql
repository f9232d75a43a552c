-- Poison jobs: deliveries that found the job still "running" while nobody held it (its worker
-- died mid-run). After max_worker_losses the job is dead-lettered instead of run again.
ALTER TABLE relayq_jobs ADD COLUMN worker_losses integer NOT NULL DEFAULT 0;

-- A dead-lettering decided by a worker but not yet stored by dlq-svc: kept here durably until
-- dlq-svc acknowledges it; only then does the job become 'dead_lettered'.
ALTER TABLE relayq_jobs ADD COLUMN pending_dead_letter jsonb;
