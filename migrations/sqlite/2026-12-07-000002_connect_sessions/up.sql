-- Connect sessions (issue 15): a tenant's single-use link to the hosted connect page, where a
-- clinic's EHR admin fills the install-level settings and starts the OAuth flow. Only the
-- SHA-256 (hex) of the link token is stored. `status` is `pending` until the page's form is
-- submitted, then `used` (claimed atomically: one UPDATE ... WHERE status = 'pending'), with
-- the install it created; an expired session is a pending one past `expires_at`.
CREATE TABLE connect_sessions (
    id           TEXT   NOT NULL PRIMARY KEY,
    tenant_id    TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    account_id   TEXT   NOT NULL,
    connector_id TEXT   NOT NULL,
    token_hash   TEXT   NOT NULL UNIQUE,
    return_url   TEXT,
    api_key_id   TEXT,
    status       TEXT   NOT NULL,
    install_id   TEXT,
    expires_at   BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    used_at      BIGINT
);
CREATE INDEX connect_sessions_tenant_created ON connect_sessions (tenant_id, created_at);
