-- Keyset pagination: every tenant list is read in (created_at, id) order from a cursor
-- position, so each one walks an index in that order instead of sorting the tenant's rows.
-- The new indexes start with the columns of the two they replace.
CREATE INDEX accounts_tenant_created ON accounts (tenant_id, created_at, id);
CREATE INDEX installs_tenant_created ON installs (tenant_id, created_at, id);
CREATE INDEX installs_tenant_account_created ON installs (tenant_id, account_id, created_at, id);
DROP INDEX installs_tenant_account;
CREATE INDEX api_keys_tenant_created ON api_keys (tenant_id, created_at, id);
DROP INDEX api_keys_tenant;
