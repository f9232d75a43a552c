-- Deliveries that found their job already finished: counted, never run again.
ALTER TABLE relayq_jobs ADD COLUMN duplicate_deliveries integer NOT NULL DEFAULT 0;

-- Retention purges finished jobs by age; this keeps that scan off the whole table.
CREATE INDEX relayq_jobs_finished ON relayq_jobs (finished_at)
    WHERE state IN ('succeeded', 'dead_lettered');
