-- Issue 13: endpoints whose deliveries keep failing are disabled by the dispatcher.
-- `failing_since`: epoch ms of the first failed attempt since the endpoint's last successful
-- delivery (NULL: its last attempt succeeded, or none failed yet); cleared by a delivery and
-- when the endpoint is enabled. `disabled_reason`: why `disabled_at` is set: 'manual'
-- (PATCH {"enabled": false}) or 'failing' (every attempt failed for
-- webhooks.disable_after_failing_secs); NULL while enabled.
ALTER TABLE webhook_endpoints ADD COLUMN failing_since BIGINT;
ALTER TABLE webhook_endpoints ADD COLUMN disabled_reason TEXT;
UPDATE webhook_endpoints SET disabled_reason = 'manual' WHERE disabled_at IS NOT NULL;
