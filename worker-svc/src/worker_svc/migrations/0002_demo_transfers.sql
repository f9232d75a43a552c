-- The demo.transfer handler's effect: account balances and a journal of transfers. Unlike
-- demo_charges, nothing here deduplicates by key: a transfer applied twice shows as two journal
-- rows for one key and balances that no longer add up to what the succeeded jobs moved. So the
-- audits that count on it (the chaos run, the property test) can see a double application.
CREATE TABLE demo_accounts (
    account       text PRIMARY KEY,
    balance_cents bigint NOT NULL DEFAULT 0
);

CREATE TABLE demo_transfers (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          text NOT NULL,
    idempotency_key text NOT NULL,
    from_account    text NOT NULL,
    to_account      text NOT NULL,
    amount_cents    bigint NOT NULL CHECK (amount_cents > 0),
    transferred_at  timestamptz NOT NULL DEFAULT now()
);

-- For audits by key; deliberately not unique.
CREATE INDEX demo_transfers_key ON demo_transfers (idempotency_key);
