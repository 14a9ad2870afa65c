-- When a purchase's entitlement ends (subscriptions), for entitlements.
-- Kept in step with ../sqlite/0003_expiry.sql.
ALTER TABLE purchases ADD COLUMN expiry_ms BIGINT;
