-- Refunds that revoke grants, acknowledgements iapd tracks and makes, and a
-- count that lets a batch number history entries without reading them. Kept
-- in step with ../sqlite/0005_revocations_and_acknowledgements.sql.

-- The purchase id is a hash of (store, app_id, store_key), so its primary key
-- already makes them unique; the second index only cost every insert a write
-- and tempted the planner to look proofs up by its prefix.
ALTER TABLE purchases DROP CONSTRAINT purchases_store_app_id_store_key_key;

-- How many history entries a purchase has.
ALTER TABLE purchases ADD COLUMN history_count BIGINT NOT NULL DEFAULT 0;
UPDATE purchases SET history_count =
    (SELECT COALESCE(MAX(h.seq), 0) FROM purchase_history AS h WHERE h.purchase_id = purchases.purchase_id);

-- When a valid purchase the store reports not acknowledged must be
-- acknowledged by (Google refunds it after 3 days); NULL when nothing is due.
ALTER TABLE purchases ADD COLUMN ack_due_ms BIGINT;
CREATE INDEX purchases_by_ack_due ON purchases (store, ack_due_ms) WHERE ack_due_ms IS NOT NULL;

-- A refund seen later revokes what the purchase granted.
ALTER TABLE grants ADD COLUMN revoked_ms BIGINT;

-- Purchases iapd acknowledges itself (the app's `acknowledge` policy), with
-- the proof the store needs; a row leaves once the acknowledgement is
-- recorded or its deadline has passed.
CREATE TABLE pending_acknowledgements (
    purchase_id TEXT PRIMARY KEY REFERENCES purchases (purchase_id),
    store TEXT NOT NULL,
    app_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    proof TEXT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    next_attempt_ms BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    last_error TEXT NOT NULL
);
CREATE INDEX pending_acknowledgements_by_next_attempt ON pending_acknowledgements (next_attempt_ms);
