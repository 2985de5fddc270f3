-- Issue 12: the setup's CapabilityStatement check. At each setup save the host reads the FHIR
-- base's `metadata` and compares the connector's declared search parameters with the ones the
-- server lists. One row per tenant and connector (the setup's check; replaced at each save,
-- dropped with the setup). `warnings` is a JSON array of `{method, resource, param}` (public
-- connector facts, nothing secret, no patient data); `error` says why the statement could not
-- be read (URL and HTTP status only), then `warnings` is `[]`. `checked_at` is epoch ms.
CREATE TABLE setup_capability_checks (
    tenant_id    TEXT   NOT NULL,
    connector_id TEXT   NOT NULL,
    fhir_base    TEXT   NOT NULL,
    warnings     TEXT   NOT NULL,
    error        TEXT,
    checked_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, connector_id)
);
