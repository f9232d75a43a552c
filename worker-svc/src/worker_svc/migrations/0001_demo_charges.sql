-- The demo.charge handler's effect: one row per charge. The idempotency key is unique here too,
-- so even a bug in the claim protocol could not write a second row for one key.
CREATE TABLE demo_charges (
    idempotency_key text PRIMARY KEY,
    job_id          text NOT NULL,
    account         text NOT NULL,
    amount_cents    bigint NOT NULL CHECK (amount_cents > 0),
    charged_at      timestamptz NOT NULL DEFAULT now()
);
