-- Install-status webhooks (Standard Webhooks) delivered from a transactional outbox.

-- A tenant's receiver. The signing secret ("whsec_" + base64 of 32 random bytes) is sealed with
-- the key ring under AAD "webhook:{id}:secret" and shown once, at creation. `events` is a
-- space-separated list of event types ("" = every type). `lease_owner`/`lease_until` let one
-- dispatcher (any replica) deliver to the endpoint at a time: one delivery in flight, in order.
CREATE TABLE webhook_endpoints (
    id            TEXT   NOT NULL PRIMARY KEY,
    tenant_id     TEXT   NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url           TEXT   NOT NULL,
    events        TEXT   NOT NULL,
    secret        BYTEA  NOT NULL,
    created_at    BIGINT NOT NULL,
    disabled_at   BIGINT,
    lease_owner   TEXT,
    lease_until   BIGINT
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, created_at, id);

-- The outbox: one row per state change, written in the same transaction as the change.
-- `seq` orders the events (per tenant, commits are serialised while an event is written, so
-- seq order is commit order). The payload holds ids and statuses only: never a token, a secret
-- or patient data.
CREATE TABLE webhook_events (
    seq           BIGSERIAL NOT NULL PRIMARY KEY,
    id            TEXT   NOT NULL UNIQUE,
    tenant_id     TEXT   NOT NULL,
    event_type    TEXT   NOT NULL,
    install_id    TEXT,
    payload       TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX webhook_events_install ON webhook_events (install_id, seq);

-- One row per (event, endpoint) whose filter matched when the event was written. A delivery is
-- pending (next_attempt_at says when), delivered or failed (retries exhausted).
CREATE TABLE webhook_deliveries (
    endpoint_id     TEXT   NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_seq       BIGINT NOT NULL REFERENCES webhook_events (seq) ON DELETE CASCADE,
    tenant_id       TEXT   NOT NULL,
    state           TEXT   NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    retry_from      BIGINT NOT NULL,
    last_status     BIGINT,
    last_error      TEXT,
    last_attempt_at BIGINT,
    delivered_at    BIGINT,
    PRIMARY KEY (endpoint_id, event_seq)
);
-- The dispatcher: due pending deliveries, and each endpoint's oldest pending one.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (endpoint_id, state, event_seq);
