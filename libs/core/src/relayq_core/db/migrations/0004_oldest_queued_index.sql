-- The metrics gateway's "age of the oldest waiting job" per queue: one index probe per queue
-- per scrape, whatever the backlog. enqueued_at is when the job (re-)entered the queue.
CREATE INDEX relayq_jobs_queued_since ON relayq_jobs (queue, enqueued_at)
    WHERE state = 'queued' AND enqueued_at IS NOT NULL;
