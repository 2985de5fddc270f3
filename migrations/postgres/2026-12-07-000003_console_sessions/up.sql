-- Web console sessions (issue 15): `POST /console/session` exchanges a tenant API key for an
-- opaque session token held in an HttpOnly cookie. Only the token's SHA-256 is stored. A session
-- ends when its API key is revoked (the lookup joins active keys), after `console.session_idle_secs`
-- without a request (`last_seen_at`), at `expires_at` (`console.session_max_secs` after sign-in),
-- or at sign-out. Expired rows are purged at each sign-in.
CREATE TABLE console_sessions (
    token_hash   TEXT   NOT NULL PRIMARY KEY,
    tenant_id    TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    api_key_id   TEXT   NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at);
