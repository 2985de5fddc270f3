-- Cheaper audit inserts (issue 13): the table's constraints resolve a conflict by rolling back
-- the transaction (ON CONFLICT ROLLBACK) instead of aborting the statement (the default). The
-- audit writer inserts a batch as 32-row INSERTs in one transaction. A multi-row statement
-- whose constraint may abort it needs a statement journal, so that the abort can undo the rows
-- it already wrote: SQLite copies every page the statement first touches into it, and past
-- 64 KiB spills it to a temporary file. With patients spread over a batch, each row dirties
-- another leaf of the patient index, and those copies cost more than the multi-row INSERT saves
-- (docs/BENCHMARKS.md, "Eighth pass"). A batch lands whole or not at all anyway: a conflict
-- (a duplicate id, or a NULL where Rust's types allow none) now ends its transaction, which
-- the writer was about to roll back; inside a larger transaction (a key rotation, a tenant's
-- creation) it ends that one, which the error would have rolled back too. No row changes.
-- SQLite cannot change a constraint in place: the table is copied (one transaction).
CREATE TABLE audit_events_new (
    id              TEXT   NOT NULL ON CONFLICT ROLLBACK,
    tenant_id       TEXT   NOT NULL ON CONFLICT ROLLBACK,
    at              BIGINT NOT NULL ON CONFLICT ROLLBACK,
    kind            TEXT   NOT NULL ON CONFLICT ROLLBACK,
    action          TEXT   NOT NULL ON CONFLICT ROLLBACK,
    api_key_id      TEXT,
    account_id      TEXT,
    install_id      TEXT,
    connector_id    TEXT,
    status          BIGINT NOT NULL ON CONFLICT ROLLBACK,
    code            TEXT,
    upstream_status BIGINT,
    duration_ms     BIGINT,
    request_id      TEXT,
    patient_hash    TEXT,
    PRIMARY KEY (tenant_id, at, id) ON CONFLICT ROLLBACK
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
