-- The ledger churns: every job is inserted, updated three times (claim, success, enqueued mark)
-- and gets an attempt row, so autovacuum visits relayq_jobs and relayq_job_attempts about once a
-- minute under steady load. At the default pace (2 ms of sleep per 200 cost units) each visit
-- is a burst of about a core for a second or two, and on a small machine every submit and
-- delivery in that second waits behind it: the bursts were most of the p99 submit latency in
-- docs/benchmarks.md. Ten times the sleep spreads the same work over ten times as long, at a
-- tenth of the intensity; it still finishes long before the next visit is due.
ALTER TABLE relayq_jobs SET (autovacuum_vacuum_cost_delay = 20);
ALTER TABLE relayq_job_attempts SET (autovacuum_vacuum_cost_delay = 20);
