-- PHI audit trail: one append-only row per method call and per administrative change.
-- Never parameter values nor response data: the patient appears only as an HMAC-SHA256
-- (per-tenant key) in patient_hash. No foreign key to tenants: audit rows outlive what they
-- describe, and inserts stay cheap; retention (audit.retention_days) deletes by `at`.
CREATE TABLE audit_events (
    id              TEXT   NOT NULL PRIMARY KEY,
    tenant_id       TEXT   NOT NULL,
    at              BIGINT NOT NULL,
    kind            TEXT   NOT NULL,
    action          TEXT   NOT NULL,
    api_key_id      TEXT,
    account_id      TEXT,
    install_id      TEXT,
    connector_id    TEXT,
    status          BIGINT NOT NULL,
    code            TEXT,
    upstream_status BIGINT,
    duration_ms     BIGINT,
    request_id      TEXT,
    patient_hash    TEXT
);
-- Keyset paging of a tenant's trail in (at, id) order, with or without a filter.
CREATE INDEX audit_events_tenant_at ON audit_events (tenant_id, at, id);
CREATE INDEX audit_events_tenant_install_at ON audit_events (tenant_id, install_id, at, id);
CREATE INDEX audit_events_tenant_patient_at ON audit_events (tenant_id, patient_hash, at, id);
-- Retention purge across tenants.
CREATE INDEX audit_events_at ON audit_events (at);

-- The tenant's patient-hash key: 32 random bytes sealed with the key ring (AAD
-- "audit_key:{tenant}"), created on first use. Stored rather than derived from the ring so
-- that key rotation (which retires old keys) does not change the hashes of six years of rows.
CREATE TABLE audit_keys (
    tenant_id  TEXT   NOT NULL PRIMARY KEY,
    sealed_key BLOB   NOT NULL,
    created_at BIGINT NOT NULL
);
