-- When the store last answered for a purchase, so that a purchase in a final
-- state can be answered from the ledger for a while. Kept in step with
-- ../postgres/0004_store_checked.sql.
ALTER TABLE purchases ADD COLUMN store_checked_ms INTEGER;
-- The store's last description of the purchase (protobuf, hex), for those
-- answers; its raw answer is in raw_store_response.
ALTER TABLE purchases ADD COLUMN last_purchase TEXT;
