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
        api_key_id -> Nullable<Text>,
    }
}

diesel::table! {
    audit_events (tenant_id, at, id) {
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

diesel::table! {
    webhook_endpoints (id) {
        id -> Text,
        tenant_id -> Text,
        url -> Text,
        events -> Text,
        secret -> Binary,
        created_at -> BigInt,
        disabled_at -> Nullable<BigInt>,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<BigInt>,
        failing_since -> Nullable<BigInt>,
        disabled_reason -> Nullable<Text>,
    }
}

diesel::table! {
    webhook_events (seq) {
        seq -> BigInt,
        id -> Text,
        tenant_id -> Text,
        event_type -> Text,
        install_id -> Nullable<Text>,
        payload -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    setup_signing_keys (kid) {
        kid -> Text,
        tenant_id -> Text,
        connector_id -> Text,
        jwks_id -> Text,
        alg -> Text,
        public_jwk -> Text,
        private_key -> Binary,
        origin -> Text,
        active_from -> BigInt,
        retire_at -> Nullable<BigInt>,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_deliveries (endpoint_id, event_seq) {
        endpoint_id -> Text,
        event_seq -> BigInt,
        tenant_id -> Text,
        state -> Text,
        attempts -> BigInt,
        next_attempt_at -> BigInt,
        retry_from -> BigInt,
        last_status -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
        last_attempt_at -> Nullable<BigInt>,
        delivered_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    key_rotation (column_name) {
        column_name -> Text,
        target_kid -> Text,
        cursor -> Nullable<Text>,
        done -> BigInt,
        rewritten -> BigInt,
        started_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    smart_discovery (tenant_id, connector_id, fhir_base) {
        tenant_id -> Text,
        connector_id -> Text,
        fhir_base -> Text,
        document -> Text,
        fetched_at -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::joinable!(api_keys -> tenants (tenant_id));
diesel::joinable!(connector_setups -> tenants (tenant_id));
diesel::joinable!(accounts -> tenants (tenant_id));
diesel::joinable!(oauth_states -> installs (install_id));
diesel::joinable!(webhook_deliveries -> webhook_endpoints (endpoint_id));
diesel::joinable!(webhook_deliveries -> webhook_events (event_seq));

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
    webhook_endpoints,
    webhook_events,
    webhook_deliveries,
    setup_signing_keys,
    key_rotation,
    smart_discovery,
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

// Issue 15, the web console: sessions (migration 2026-12-07-000003_console_sessions).
diesel::table! {
    console_sessions (token_hash) {
        token_hash -> Text,
        tenant_id -> Text,
        api_key_id -> Text,
        created_at -> BigInt,
        last_seen_at -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::joinable!(console_sessions -> api_keys (api_key_id));
diesel::allow_tables_to_appear_in_same_query!(console_sessions, api_keys);
// Issue 15, agent sessions for the MCP server (migration 2026-12-07-000001_agent_sessions).
diesel::table! {
    agent_sessions (id) {
        id -> Text,
        tenant_id -> Text,
        account_id -> Text,
        install_id -> Text,
        connector_id -> Text,
        token_hash -> Text,
        methods -> Text,
        allow_writes -> BigInt,
        created_at -> BigInt,
        expires_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

// Issue 12, parameter names checked against the server: the setup's CapabilityStatement check
// (migration 2026-12-07-000005_capability_check).
diesel::table! {
    setup_capability_checks (tenant_id, connector_id) {
        tenant_id -> Text,
        connector_id -> Text,
        fhir_base -> Text,
        warnings -> Text,
        error -> Nullable<Text>,
        checked_at -> BigInt,
    }
}

// Issue 15, hosted connect page: connect sessions (migration 2026-12-07-000002_connect_sessions).
diesel::table! {
    connect_sessions (id) {
        id -> Text,
        tenant_id -> Text,
        account_id -> Text,
        connector_id -> Text,
        token_hash -> Text,
        return_url -> Nullable<Text>,
        api_key_id -> Nullable<Text>,
        status -> Text,
        install_id -> Nullable<Text>,
        expires_at -> BigInt,
        created_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

// Issue 12, Bulk Data: export jobs (migration 2026-12-07-000004_bulk_jobs).
diesel::table! {
    bulk_jobs (id) {
        id -> Text,
        tenant_id -> Text,
        account_id -> Text,
        install_id -> Text,
        method_id -> Text,
        status_url -> Binary,
        state -> Text,
        progress -> Nullable<Text>,
        next_poll_at -> BigInt,
        attempts -> BigInt,
        manifest -> Nullable<Binary>,
        error -> Nullable<Text>,
        downloaded -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        completed_at -> Nullable<BigInt>,
        upstream_deleted_at -> Nullable<BigInt>,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<BigInt>,
    }
}
