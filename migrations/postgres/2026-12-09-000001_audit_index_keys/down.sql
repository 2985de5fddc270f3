DROP INDEX audit_events_patient_at;
DROP INDEX audit_events_install_at;
ALTER TABLE audit_events DROP CONSTRAINT audit_events_pkey;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_pkey PRIMARY KEY (id);
CREATE INDEX audit_events_tenant_at ON audit_events (tenant_id, at, id);
CREATE INDEX audit_events_tenant_install_at ON audit_events (tenant_id, install_id, at, id);
CREATE INDEX audit_events_tenant_patient_at ON audit_events (tenant_id, patient_hash, at, id);
