-- Agent sessions (issue 15): bearer access to one install's methods through the MCP server at
-- /mcp. The token (`sba_…`) is shown once at creation; only its hex SHA-256 is stored.
-- `methods` is the JSON array of the method ids the session may call (its MCP tools);
-- `allow_writes` is 0/1. A session is usable while `revoked_at` is null and `expires_at` (epoch
-- ms) is ahead. No foreign key to the install: a deleted install refuses the session's next tool
-- call through the method path (404), and the session row stays for the tenant's list until
-- revoked; deleting the tenant removes its sessions.
CREATE TABLE agent_sessions (
    id           TEXT   NOT NULL PRIMARY KEY,
    tenant_id    TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    account_id   TEXT   NOT NULL,
    install_id   TEXT   NOT NULL,
    connector_id TEXT   NOT NULL,
    token_hash   TEXT   NOT NULL UNIQUE,
    methods      TEXT   NOT NULL,
    allow_writes BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX agent_sessions_tenant_order ON agent_sessions (tenant_id, created_at, id);
