//! The one diesel schema, shared by both backends: only types both have (Text, BigInt, Binary,
//! and their Nullable forms). Must match `migrations/{sqlite,postgres}`; the repository tests
//! select every column of every table on both backends.

diesel::table! {
    tenants (id) {
        id -> Text,
        name -> Text,
        allowed_return_urls -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        tenant_id -> Text,
        name -> Text,
        prefix -> Text,
        key_hash -> Text,
        created_at -> BigInt,
        last_used_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    connector_setups (tenant_id, connector_id) {
        tenant_id -> Text,
        connector_id -> Text,
        settings -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    accounts (tenant_id, id) {
        tenant_id -> Text,
        id -> Text,
        name -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    installs (id) {
        id -> Text,
        tenant_id -> Text,
        account_id -> Text,
        connector_id -> Text,
        auth_type -> Text,
        status -> Text,
        settings -> Text,
        return_url -> Nullable<Text>,
        access_token -> Nullable<Binary>,
        refresh_token -> Nullable<Binary>,
        token_expires_at -> Nullable<BigInt>,
        scopes -> Nullable<Text>,
        context -> Nullable<Text>,
        token_version -> BigInt,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
        last_refresh_at -> Nullable<BigInt>,
        last_refresh_error -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
        last_used_at -> Nullable<BigInt>,
        refresh_expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    oauth_states (state_hash) {
        state_hash -> Text,
        install_id -> Text,
        tenant_id -> Text,
        verifier -> Binary,
        token_url -> Text,
        redirect_uri -> Text,
        expected_issuer -> Nullable<Text>,
        return_url -> Nullable<Text>,
        expires_at -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    audit_events (id) {
        id -> Text,
        tenant_id -> Text,
        at -> BigInt,
        kind -> Text,
        action -> Text,
        api_key_id -> Nullable<Text>,
        account_id -> Nullable<Text>,
        install_id -> Nullable<Text>,
        connector_id -> Nullable<Text>,
        status -> BigInt,
        code -> Nullable<Text>,
        upstream_status -> Nullable<BigInt>,
        duration_ms -> Nullable<BigInt>,
        request_id -> Nullable<Text>,
        patient_hash -> Nullable<Text>,
    }
}

diesel::table! {
    audit_keys (tenant_id) {
        tenant_id -> Text,
        sealed_key -> Binary,
        created_at -> BigInt,
    }
}

diesel::table! {
    instances (id) {
        id -> Text,
        started_at -> BigInt,
        heartbeat_at -> BigInt,
    }
}

diesel::joinable!(api_keys -> tenants (tenant_id));
diesel::joinable!(connector_setups -> tenants (tenant_id));
diesel::joinable!(accounts -> tenants (tenant_id));
diesel::joinable!(oauth_states -> installs (install_id));

diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    api_keys,
    connector_setups,
    accounts,
    installs,
    oauth_states,
    audit_events,
    audit_keys,
    instances,
);

// Issue 12, writes: Idempotency-Key records (migration 2026-12-06-000008_idempotency).
diesel::table! {
    idempotency_keys (install_id, key) {
        tenant_id -> Text,
        install_id -> Text,
        key -> Text,
        request_hash -> Text,
        status -> Text,
        response -> Nullable<Binary>,
        created_at -> BigInt,
    }
}
