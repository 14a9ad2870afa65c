-- When the store last answered for a purchase, so that a purchase in a final
-- state can be answered from the ledger for a while. Kept in step with
-- ../postgres/0004_store_checked.sql.
ALTER TABLE purchases ADD COLUMN store_checked_ms INTEGER;
UPDATE purchases SET store_checked_ms = last_seen_ms;
