-- Grants and the store-side state of purchases. Kept in step with
-- ../postgres/0002_grants.sql.

-- The one grant of a purchase to a user (its owner, or a user it is shared
-- with): started, then confirmed by the backend that granted the content.
CREATE TABLE grants (
    grant_id TEXT PRIMARY KEY,
    purchase_id TEXT NOT NULL REFERENCES purchases (purchase_id),
    user_id TEXT NOT NULL,
    state TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    confirmed_ms INTEGER,
    UNIQUE (purchase_id, user_id)
);

-- Acknowledge and Consume, as iapd saw them succeed at the store.
ALTER TABLE purchases ADD COLUMN acknowledged_ms INTEGER;
ALTER TABLE purchases ADD COLUMN consumed_ms INTEGER;

-- Acknowledge and Consume name a purchase by its proof.
CREATE INDEX purchases_by_proof ON purchases (store, app_id, proof_hash);
