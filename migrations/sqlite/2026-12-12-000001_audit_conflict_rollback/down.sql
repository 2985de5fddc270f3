-- The constraints' default conflict resolution (ABORT) again.
CREATE TABLE audit_events_old (
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
INSERT INTO audit_events_old (id, tenant_id, at, kind, action, api_key_id, account_id,
    install_id, connector_id, status, code, upstream_status, duration_ms, request_id, patient_hash)
SELECT id, tenant_id, at, kind, action, api_key_id, account_id, install_id, connector_id,
    status, code, upstream_status, duration_ms, request_id, patient_hash
FROM audit_events;
DROP TABLE audit_events;
ALTER TABLE audit_events_old RENAME TO audit_events;
CREATE INDEX audit_events_install_at ON audit_events (install_id, at, id) WHERE install_id IS NOT NULL;
CREATE INDEX audit_events_patient_at ON audit_events (patient_hash, at, id) WHERE patient_hash IS NOT NULL;
CREATE INDEX audit_events_at ON audit_events (at);
