-- A job whose attempts kept running past their time limit is dead-lettered with reason
-- 'timeout' (worker-svc's time limits, docs/retries.md).
ALTER TABLE dlq_entries DROP CONSTRAINT dlq_entries_reason_check;
ALTER TABLE dlq_entries ADD CONSTRAINT dlq_entries_reason_check
    CHECK (reason IN ('retries_exhausted', 'permanent_error', 'worker_lost', 'timeout'));
