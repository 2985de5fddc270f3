-- Switchboard schema, SQLite flavour. Keep in step with ../../postgres/ (same version names,
-- same tables, columns and nullability; only the binary type differs: BLOB here, BYTEA there).
-- Times are BIGINT epoch milliseconds, JSON is TEXT.

CREATE TABLE tenants (
    id                  TEXT    NOT NULL PRIMARY KEY,
    name                TEXT    NOT NULL,
    allowed_return_urls TEXT    NOT NULL DEFAULT '[]',
    created_at          BIGINT  NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT   NOT NULL PRIMARY KEY,
    tenant_id    TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         TEXT   NOT NULL,
    prefix       TEXT   NOT NULL,
    key_hash     TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE UNIQUE INDEX api_keys_key_hash ON api_keys (key_hash);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE connector_setups (
    tenant_id    TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    connector_id TEXT   NOT NULL,
    settings     TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, connector_id)
);

CREATE TABLE accounts (
    tenant_id  TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id         TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE installs (
    id                 TEXT   NOT NULL PRIMARY KEY,
    tenant_id          TEXT   NOT NULL,
    account_id         TEXT   NOT NULL,
    connector_id       TEXT   NOT NULL,
    auth_type          TEXT   NOT NULL,
    status             TEXT   NOT NULL,
    settings           TEXT   NOT NULL DEFAULT '{}',
    return_url         TEXT,
    access_token       BLOB,
    refresh_token      BLOB,
    token_expires_at   BIGINT,
    scopes             TEXT,
    context            TEXT,
    token_version      BIGINT NOT NULL DEFAULT 0,
    lease_owner        TEXT,
    lease_until        BIGINT,
    last_error         TEXT,
    last_refresh_at    BIGINT,
    last_refresh_error TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    FOREIGN KEY (tenant_id, account_id) REFERENCES accounts (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX installs_tenant_account ON installs (tenant_id, account_id);
CREATE INDEX installs_status_expiry ON installs (status, token_expires_at);

CREATE TABLE oauth_states (
    state_hash      TEXT   NOT NULL PRIMARY KEY,
    install_id      TEXT   NOT NULL REFERENCES installs (id) ON DELETE CASCADE,
    tenant_id       TEXT   NOT NULL,
    verifier        BLOB   NOT NULL,
    token_url       TEXT   NOT NULL,
    redirect_uri    TEXT   NOT NULL,
    expected_issuer TEXT,
    return_url      TEXT,
    expires_at      BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX oauth_states_expires ON oauth_states (expires_at);
CREATE INDEX oauth_states_install ON oauth_states (install_id);
