-- Cheaper audit inserts (issue 13): every index of audit_events is written once per method
-- call, so each one costs on the request path's budget. Five B-trees become four, with
-- narrower keys (docs/BENCHMARKS.md, "Fourth pass"):
-- - the primary key is (tenant_id, at, id), the order of a tenant's trail, and replaces both
--   the primary key on id alone and audit_events_tenant_at (an id is unique by itself: its
--   time and 80 random bits; unique with the tenant and time all the more);
-- - the install and patient filters are indexed on (install_id, at, id) and (patient_hash,
--   at, id), without the tenant: an install id is global and a patient hash is keyed per
--   tenant, so the tenant is a filter on the rows they find. Each key orders what it finds as
--   the trail is paged, (at, id), so both PostgreSQL and SQLite (which keeps no statistics
--   unless ANALYZE runs) choose it over a scan of the tenant's trail. Partial: administrative
--   records have no install and most calls no patient, and those rows are not indexed;
-- - audit_events_at (retention, export across tenants) stays.
-- SQLite cannot change a primary key in place: the table is copied (one transaction).
CREATE TABLE audit_events_new (
    id              TEXT   NOT NULL,
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
    patient_hash    TEXT,
    PRIMARY KEY (tenant_id, at, id)
);
INSERT INTO audit_events_new (id, tenant_id, at, kind, action, api_key_id, account_id,
    install_id, connector_id, status, code, upstream_status, duration_ms, request_id, patient_hash)
SELECT id, tenant_id, at, kind, action, api_key_id, account_id, install_id, connector_id,
    status, code, upstream_status, duration_ms, request_id, patient_hash
FROM audit_events;
DROP TABLE audit_events;
ALTER TABLE audit_events_new RENAME TO audit_events;
CREATE INDEX audit_events_install_at ON audit_events (install_id, at, id) WHERE install_id IS NOT NULL;
CREATE INDEX audit_events_patient_at ON audit_events (patient_hash, at, id) WHERE patient_hash IS NOT NULL;
CREATE INDEX audit_events_at ON audit_events (at);
