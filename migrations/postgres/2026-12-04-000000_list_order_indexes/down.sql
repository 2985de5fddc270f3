CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
DROP INDEX api_keys_tenant_created;
CREATE INDEX installs_tenant_account ON installs (tenant_id, account_id);
DROP INDEX installs_tenant_account_created;
DROP INDEX installs_tenant_created;
DROP INDEX accounts_tenant_created;
