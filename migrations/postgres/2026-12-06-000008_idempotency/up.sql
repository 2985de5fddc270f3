-- Idempotency-Key of write method calls (issue 12), per tenant and install: the first call with a key on an install
-- claims the row (status `in_flight`), its success stores the response (`done`); a later call
-- with the same key and the same request hash within 24 h is answered from `response` without a
-- second upstream write. `request_hash` is the hex SHA-256 of the method id and the canonical
-- body. `response` is patient data: AES-GCM under the key ring, AAD
-- `idempotency:<install_id>:<key>`. Rows older than 24 h are purged on access.
CREATE TABLE idempotency_keys (
    tenant_id    TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    install_id   TEXT   NOT NULL REFERENCES installs (id) ON DELETE CASCADE,
    key          TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    status       TEXT   NOT NULL,
    response     BYTEA,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (install_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
