-- SMART Backend Services keys of a tenant's connector setup. A setup has one key set, named
-- publicly by jwks_id (the opaque, unguessable id of its hosted JWK Set URL, the same on every
-- row of the set). private_key is the PKCS#8 PEM sealed with the key ring (AAD
-- "signing_key:{tenant}:{connector}:{kid}"); public_jwk holds only public members.
-- Rotation is a schedule, not a job: a key signs from active_from on (the newest such key
-- wins) and is published until retire_at (NULL: not retiring), so every replica derives the
-- same state from the rows and the clock.
CREATE TABLE setup_signing_keys (
    kid          TEXT   NOT NULL PRIMARY KEY,
    tenant_id    TEXT   NOT NULL,
    connector_id TEXT   NOT NULL,
    jwks_id      TEXT   NOT NULL,
    alg          TEXT   NOT NULL,
    public_jwk   TEXT   NOT NULL,
    private_key  BYTEA   NOT NULL,
    origin       TEXT   NOT NULL,
    active_from  BIGINT NOT NULL,
    retire_at    BIGINT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX setup_signing_keys_setup ON setup_signing_keys (tenant_id, connector_id);
CREATE INDEX setup_signing_keys_jwks ON setup_signing_keys (jwks_id);
