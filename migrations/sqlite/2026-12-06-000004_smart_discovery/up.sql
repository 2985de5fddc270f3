-- Issue 11: the SMART discovery cache (`.well-known/smart-configuration` of a FHIR base), in the
-- database so every replica sees the same document. One row per tenant, connector and FHIR base
-- (an install override with its own base gets its own row). `document` is the JSON the host
-- keeps (issuer, endpoints, capabilities, ...): public metadata, nothing secret. A row is used
-- until `expires_at` (epoch ms; discovery.ttl_secs after `fetched_at`), or until a token call
-- fails with an endpoint error, which sets `expires_at` to 0.
CREATE TABLE smart_discovery (
    tenant_id    TEXT   NOT NULL,
    connector_id TEXT   NOT NULL,
    fhir_base    TEXT   NOT NULL,
    document     TEXT   NOT NULL,
    fetched_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, connector_id, fhir_base)
);
