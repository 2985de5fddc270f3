-- FHIR Bulk Data export jobs (issue 12). One row per `kind = "bulk_export"` kick-off the EHR
-- accepted (202 + Content-Location). Any replica's poller claims a due job with the lease
-- (`lease_owner`, `lease_until`: one conditional UPDATE), polls the status URL, and writes the
-- outcome: `state` accepted -> in_progress -> completed | failed, or cancelled / expired.
-- The status URL and the manifest (its output file URLs may be signed URLs that grant access by
-- themselves) are sealed with the key ring, AAD `bulk_job:{id}:status_url` and
-- `bulk_job:{id}:manifest`. `error` holds an OperationOutcome's diagnostics (truncated), never
-- file content. `downloaded` lists the output indexes fetched (comma-separated): when all are,
-- the export is deleted upstream (`upstream_deleted_at`).
CREATE TABLE bulk_jobs (
    id                  TEXT   NOT NULL PRIMARY KEY,
    tenant_id           TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    account_id          TEXT   NOT NULL,
    install_id          TEXT   NOT NULL REFERENCES installs (id) ON DELETE CASCADE,
    method_id           TEXT   NOT NULL,
    status_url          BYTEA  NOT NULL,
    state               TEXT   NOT NULL,
    progress            TEXT,
    next_poll_at        BIGINT NOT NULL,
    attempts            BIGINT NOT NULL,
    manifest            BYTEA,
    error               TEXT,
    downloaded          TEXT   NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    completed_at        BIGINT,
    upstream_deleted_at BIGINT,
    lease_owner         TEXT,
    lease_until         BIGINT
);
-- The list (per install, keyset on created_at, id) and the poller (due jobs by state).
CREATE INDEX bulk_jobs_install ON bulk_jobs (tenant_id, install_id, created_at, id);
CREATE INDEX bulk_jobs_due ON bulk_jobs (state, next_poll_at);
