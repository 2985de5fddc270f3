-- One row per running `switchboard serve` process (issue 10). The process writes heartbeat_at
-- every tokens.instance_heartbeat_ms; a refresh lease whose holder's heartbeat is older than
-- tokens.instance_stale_ms is taken over at once (the holder crashed), a lease of a live holder
-- never is. Removed on graceful shutdown; rows dead for a day are purged by any live process.
-- Host-level: no tenant_id (like tenants).
CREATE TABLE instances (
    id           TEXT   NOT NULL PRIMARY KEY,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
-- Polite background refresh: when a method call last used the install (batched, coarse), and
-- when its refresh token lapses if it is not used (connector `refresh_token_idle_secs`).
ALTER TABLE installs ADD COLUMN last_used_at BIGINT;
ALTER TABLE installs ADD COLUMN refresh_expires_at BIGINT;
