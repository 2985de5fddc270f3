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
-- Rebuilds the indexes: on a large trail, run it in a maintenance window.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_pkey;
DROP INDEX audit_events_tenant_at;
DROP INDEX audit_events_tenant_install_at;
DROP INDEX audit_events_tenant_patient_at;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_pkey PRIMARY KEY (tenant_id, at, id);
CREATE INDEX audit_events_install_at ON audit_events (install_id, at, id) WHERE install_id IS NOT NULL;
CREATE INDEX audit_events_patient_at ON audit_events (patient_hash, at, id) WHERE patient_hash IS NOT NULL;
