-- The ledger's first schema. Kept in step with ../postgres/0001_purchases.sql:
-- the same tables and columns, each database's own types.

-- One row per purchase, identified by its store, app and the store's own id
-- for it (or a hash of the proof when the store gives none).
CREATE TABLE purchases (
    purchase_id TEXT PRIMARY KEY,
    store TEXT NOT NULL,
    app_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    store_key TEXT NOT NULL,
    proof_hash TEXT NOT NULL,
    owner_user_id TEXT,
    verdict TEXT NOT NULL,
    state TEXT NOT NULL,
    environment TEXT NOT NULL,
    kind TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    raw_store_response TEXT NOT NULL,
    UNIQUE (store, app_id, store_key)
);

CREATE INDEX purchases_by_owner ON purchases (app_id, owner_user_id);

-- Users a purchase is shared with besides its owner (claims policy "share").
CREATE TABLE purchase_shares (
    purchase_id TEXT NOT NULL REFERENCES purchases (purchase_id),
    user_id TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (purchase_id, user_id)
);

-- Every change of a purchase, append-only.
CREATE TABLE purchase_history (
    purchase_id TEXT NOT NULL REFERENCES purchases (purchase_id),
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    change TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (purchase_id, seq)
);

-- Ledger events in one order across replicas: `seq` comes from the
-- `ledger_sequence` row, taken inside the transaction that writes the event,
-- so events commit in the order of their numbers.
CREATE TABLE ledger_events (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    app_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    purchase_id TEXT NOT NULL,
    detail TEXT NOT NULL
);

CREATE TABLE ledger_sequence (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

INSERT INTO ledger_sequence (name, value) VALUES ('events', 0);
