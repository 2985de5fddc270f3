//! Row structs (`Queryable` + `Selectable`) and insertables (`New*`). Rows that hold ciphertext
//! (or JSON embedding ciphertext) have a `Debug` that shows only its size.

use std::fmt;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::prelude::*;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;
use switchboard_core::InstallStatus;

use crate::schema::setup_signing_keys;
use crate::schema::{
    accounts, api_keys, audit_events, audit_keys, connector_setups, installs, oauth_states,
    smart_discovery, tenants,
};

struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0)
    }
}

fn redacted_opt(v: &Option<Vec<u8>>) -> Option<Redacted> {
    v.as_ref().map(|b| Redacted(b.len()))
}

/// [`InstallStatus`] in the `installs.status` text column, as its snake_case name on both
/// backends. Rows read and insert `InstallStatus` through it (`deserialize_as` /
/// `serialize_as`); a name the enum does not know fails the read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = Text)]
pub struct StatusColumn(pub InstallStatus);

impl From<InstallStatus> for StatusColumn {
    fn from(s: InstallStatus) -> Self {
        Self(s)
    }
}

impl From<StatusColumn> for InstallStatus {
    fn from(c: StatusColumn) -> Self {
        c.0
    }
}

impl<DB: Backend> FromSql<Text, DB> for StatusColumn
where
    String: FromSql<Text, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        let name = String::from_sql(bytes)?;
        InstallStatus::parse(&name)
            .map(Self)
            .ok_or_else(|| format!("unknown install status '{name}'").into())
    }
}

impl<DB: Backend> ToSql<Text, DB> for StatusColumn
where
    str: ToSql<Text, DB>,
{
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
        self.0.as_str().to_sql(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = tenants, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// JSON array of URL prefixes.
    pub allowed_return_urls: String,
    pub created_at: i64,
}

/// Insertable tenant (same columns as the row).
pub type NewTenant = Tenant;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub prefix: String,
    /// Hex SHA-256 of the whole key (the key itself is never stored).
    pub key_hash: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = api_keys)]
pub struct NewApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub prefix: String,
    pub key_hash: String,
    pub created_at: i64,
}

#[derive(Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = connector_setups, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ConnectorSetup {
    pub tenant_id: String,
    pub connector_id: String,
    /// JSON object; secret values are `{"enc":"<base64 ciphertext>"}`.
    pub settings: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Insertable setup (same columns as the row).
pub type NewConnectorSetup = ConnectorSetup;

impl fmt::Debug for ConnectorSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorSetup")
            .field("tenant_id", &self.tenant_id)
            .field("connector_id", &self.connector_id)
            .field("settings", &Redacted(self.settings.len()))
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = accounts, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct Account {
    pub tenant_id: String,
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// Insertable account (same columns as the row).
pub type NewAccount = Account;

#[derive(Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = installs, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct Install {
    pub id: String,
    pub tenant_id: String,
    pub account_id: String,
    pub connector_id: String,
    pub auth_type: String,
    #[diesel(deserialize_as = StatusColumn)]
    pub status: InstallStatus,
    /// JSON object of setting overrides; secrets as `{"enc":..}` with AAD `install:{id}:{key}`.
    pub settings: String,
    pub return_url: Option<String>,
    /// Ciphertext, AAD `install:{id}:access_token`.
    pub access_token: Option<Vec<u8>>,
    /// Ciphertext, AAD `install:{id}:refresh_token`.
    pub refresh_token: Option<Vec<u8>>,
    pub token_expires_at: Option<i64>,
    pub scopes: Option<String>,
    /// JSON object (SMART launch context: patient, encounter, ...).
    pub context: Option<String>,
    /// Bumped by every token write; writers fence on it.
    pub token_version: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub last_error: Option<String>,
    pub last_refresh_at: Option<i64>,
    pub last_refresh_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Install {
    /// The status (always `Some`: the column type is [`InstallStatus`]).
    pub fn install_status(&self) -> Option<InstallStatus> {
        Some(self.status)
    }
}

impl fmt::Debug for Install {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Install")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("account_id", &self.account_id)
            .field("connector_id", &self.connector_id)
            .field("auth_type", &self.auth_type)
            .field("status", &self.status)
            .field("settings", &Redacted(self.settings.len()))
            .field("return_url", &self.return_url)
            .field("access_token", &redacted_opt(&self.access_token))
            .field("refresh_token", &redacted_opt(&self.refresh_token))
            .field("token_expires_at", &self.token_expires_at)
            .field("scopes", &self.scopes)
            .field("context", &self.context.as_ref().map(|c| Redacted(c.len())))
            .field("token_version", &self.token_version)
            .field("lease_owner", &self.lease_owner)
            .field("lease_until", &self.lease_until)
            .field("last_error", &self.last_error)
            .field("last_refresh_at", &self.last_refresh_at)
            .field("last_refresh_error", &self.last_refresh_error)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// A new install: no tokens yet, `token_version` 0, no lease.
#[derive(Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = installs)]
pub struct NewInstall {
    pub id: String,
    pub tenant_id: String,
    pub account_id: String,
    pub connector_id: String,
    pub auth_type: String,
    #[diesel(serialize_as = StatusColumn)]
    pub status: InstallStatus,
    pub settings: String,
    pub return_url: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl fmt::Debug for NewInstall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewInstall")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("account_id", &self.account_id)
            .field("connector_id", &self.connector_id)
            .field("auth_type", &self.auth_type)
            .field("status", &self.status)
            .field("settings", &Redacted(self.settings.len()))
            .field("return_url", &self.return_url)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = oauth_states, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct OAuthState {
    /// Hex SHA-256 of the `state` parameter (the state itself is never stored).
    pub state_hash: String,
    pub install_id: String,
    pub tenant_id: String,
    /// PKCE verifier ciphertext, AAD `state:{state_hash}:verifier`.
    pub verifier: Vec<u8>,
    pub token_url: String,
    pub redirect_uri: String,
    pub expected_issuer: Option<String>,
    pub return_url: Option<String>,
    pub expires_at: i64,
    pub created_at: i64,
    /// The API key that started the authorization (its id, for the callback's audit record).
    pub api_key_id: Option<String>,
}

/// Insertable OAuth state (same columns as the row).
pub type NewOAuthState = OAuthState;

impl fmt::Debug for OAuthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthState")
            .field("state_hash", &self.state_hash)
            .field("install_id", &self.install_id)
            .field("tenant_id", &self.tenant_id)
            .field("verifier", &Redacted(self.verifier.len()))
            .field("token_url", &self.token_url)
            .field("redirect_uri", &self.redirect_uri)
            .field("expected_issuer", &self.expected_issuer)
            .field("return_url", &self.return_url)
            .field("expires_at", &self.expires_at)
            .field("created_at", &self.created_at)
            .field("api_key_id", &self.api_key_id)
            .finish()
    }
}

/// One audit record as read: who (API key, request) did what (a method call or an
/// administrative action) to which install, with what outcome. Holds no parameter value and no
/// response data; the patient only as a keyed hash. Records are written as [`NewAuditEvent`]s.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = audit_events, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct AuditEvent {
    pub id: String,
    pub tenant_id: String,
    /// Epoch milliseconds.
    pub at: i64,
    /// `method_call` or `admin`.
    pub kind: String,
    /// The method id of a call, or the administrative action (`install.created`, ...).
    pub action: String,
    pub api_key_id: Option<String>,
    pub account_id: Option<String>,
    pub install_id: Option<String>,
    pub connector_id: Option<String>,
    /// The HTTP status the caller got.
    pub status: i64,
    /// The problem code of an error outcome.
    pub code: Option<String>,
    /// The upstream's HTTP status, when the call reached the upstream.
    pub upstream_status: Option<i64>,
    pub duration_ms: Option<i64>,
    pub request_id: Option<String>,
    /// Hex HMAC-SHA256 of the patient id under the tenant's audit key.
    pub patient_hash: Option<String>,
}

impl AuditEvent {
    /// This record in the shape it is inserted in.
    pub fn as_new(&self) -> NewAuditEvent<'_> {
        NewAuditEvent {
            id: &self.id,
            tenant_id: &self.tenant_id,
            at: self.at,
            kind: &self.kind,
            action: &self.action,
            api_key_id: self.api_key_id.as_deref(),
            account_id: self.account_id.as_deref(),
            install_id: self.install_id.as_deref(),
            connector_id: self.connector_id.as_deref(),
            status: self.status,
            code: self.code.as_deref(),
            upstream_status: self.upstream_status,
            duration_ms: self.duration_ms,
            request_id: self.request_id.as_deref(),
            patient_hash: self.patient_hash.as_deref(),
        }
    }
}

/// One audit record to insert, its texts borrowed (the fields of [`AuditEvent`]). `None`
/// inserts NULL (the columns have no other default), so every row binds all fifteen columns
/// and a multi-row INSERT of a fixed row count is one statement text, prepared once (the
/// SQLite writer's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Insertable)]
#[diesel(table_name = audit_events, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
#[diesel(treat_none_as_default_value = false)]
pub struct NewAuditEvent<'a> {
    pub id: &'a str,
    pub tenant_id: &'a str,
    /// Epoch milliseconds.
    pub at: i64,
    pub kind: &'a str,
    pub action: &'a str,
    pub api_key_id: Option<&'a str>,
    pub account_id: Option<&'a str>,
    pub install_id: Option<&'a str>,
    pub connector_id: Option<&'a str>,
    pub status: i64,
    pub code: Option<&'a str>,
    pub upstream_status: Option<i64>,
    pub duration_ms: Option<i64>,
    pub request_id: Option<&'a str>,
    pub patient_hash: Option<&'a str>,
}

impl<'a> NewAuditEvent<'a> {
    /// An administrative change's record (`kind` "admin"): who made it and what it touched
    /// (API key, request, account, install, connector) are absent until the caller sets them;
    /// no upstream, duration or patient.
    pub fn admin(id: &'a str, tenant_id: &'a str, at: i64, action: &'a str, status: i64) -> Self {
        NewAuditEvent {
            id,
            tenant_id,
            at,
            kind: "admin",
            action,
            api_key_id: None,
            account_id: None,
            install_id: None,
            connector_id: None,
            status,
            code: None,
            upstream_status: None,
            duration_ms: None,
            request_id: None,
            patient_hash: None,
        }
    }
}

/// An audit record on its way to the writer: a [`NewAuditEvent`] that owns its eleven texts
/// in one allocation. A method call's record is made on a worker thread and freed on the
/// writer's. As eleven `String`s it cost eleven allocations, and eleven frees of another
/// thread's memory, which glibc makes under the owning arena's lock (docs/BENCHMARKS.md,
/// "Tenth pass").
#[derive(Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The texts, one after the other, in the order of [`AuditRecord::TEXTS`].
    text: Box<str>,
    /// Where each text ends in `text`; [`AuditRecord::NULL`] for a `None`.
    ends: [u32; AuditRecord::TEXTS],
    at: i64,
    status: i64,
    upstream_status: Option<i64>,
    duration_ms: Option<i64>,
}

impl AuditRecord {
    const TEXTS: usize = 11;
    const NULL: u32 = u32::MAX;

    /// The record's texts copied into one allocation.
    pub fn new(e: &NewAuditEvent<'_>) -> Self {
        let texts: [Option<&str>; Self::TEXTS] = [
            Some(e.id),
            Some(e.tenant_id),
            Some(e.kind),
            Some(e.action),
            e.api_key_id,
            e.account_id,
            e.install_id,
            e.connector_id,
            e.code,
            e.request_id,
            e.patient_hash,
        ];
        let mut text = String::with_capacity(texts.iter().flatten().map(|t| t.len()).sum());
        let ends = texts.map(|t| match t {
            Some(t) => {
                text.push_str(t);
                u32::try_from(text.len()).expect("an audit record's texts fit in 4 GiB")
            }
            None => Self::NULL,
        });
        Self {
            text: text.into_boxed_str(),
            ends,
            at: e.at,
            status: e.status,
            upstream_status: e.upstream_status,
            duration_ms: e.duration_ms,
        }
    }

    /// The `i`th text: from the end of the last one present before it to its own end.
    fn text(&self, i: usize) -> Option<&str> {
        let end = self.ends[i];
        if end == Self::NULL {
            return None;
        }
        let start = self.ends[..i]
            .iter()
            .rev()
            .find(|e| **e != Self::NULL)
            .map_or(0, |e| *e as usize);
        Some(&self.text[start..end as usize])
    }

    /// The record, borrowed, to insert.
    pub fn as_new(&self) -> NewAuditEvent<'_> {
        let t = |i| self.text(i);
        let required = |i| t(i).unwrap_or_default();
        NewAuditEvent {
            id: required(0),
            tenant_id: required(1),
            at: self.at,
            kind: required(2),
            action: required(3),
            api_key_id: t(4),
            account_id: t(5),
            install_id: t(6),
            connector_id: t(7),
            status: self.status,
            code: t(8),
            upstream_status: self.upstream_status,
            duration_ms: self.duration_ms,
            request_id: t(9),
            patient_hash: t(10),
        }
    }
}

/// Ids and outcome only: the patient hash and the request id stay out of logs.
impl fmt::Debug for AuditRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.as_new();
        f.debug_struct("AuditRecord")
            .field("id", &e.id)
            .field("action", &e.action)
            .field("status", &e.status)
            .finish_non_exhaustive()
    }
}

/// A tenant's patient-hash key, sealed with the key ring. `Debug` shows only its size.
#[derive(Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_keys, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct AuditKey {
    pub tenant_id: String,
    pub sealed_key: Vec<u8>,
    pub created_at: i64,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("tenant_id", &self.tenant_id)
            .field("sealed_key", &Redacted(self.sealed_key.len()))
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// A tenant's webhook endpoint. `secret` is the sealed `whsec_…` signing secret (AAD
/// `webhook:{id}:secret`); `Debug` shows only its size.
#[derive(Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = crate::schema::webhook_endpoints, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct WebhookEndpoint {
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    /// Space-separated event types; empty: every type.
    pub events: String,
    pub secret: Vec<u8>,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
    /// The dispatcher delivering to this endpoint now (one at a time, any replica).
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    /// The first failed attempt since the last successful delivery (None: not failing).
    pub failing_since: Option<i64>,
    /// Why it is disabled: `manual` (PATCH) or `failing` (the dispatcher, after
    /// `webhooks.disable_after_failing_secs` of failures); None while enabled.
    pub disabled_reason: Option<String>,
}

impl fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("events", &self.events)
            .field("secret", &Redacted(self.secret.len()))
            .field("created_at", &self.created_at)
            .field("disabled_at", &self.disabled_at)
            .field("disabled_reason", &self.disabled_reason)
            .field("failing_since", &self.failing_since)
            .finish_non_exhaustive()
    }
}

/// An outbox event as read back (`seq` orders events; `payload` is the JSON body sent).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = crate::schema::webhook_events, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct WebhookEvent {
    pub seq: i64,
    /// `msg_…`: the `webhook-id` of every delivery of this event (receivers deduplicate by it).
    pub id: String,
    pub tenant_id: String,
    pub event_type: String,
    pub install_id: Option<String>,
    pub payload: String,
    pub created_at: i64,
}

/// An event to write in the transaction of the state change it reports (`seq` is assigned).
#[derive(Debug, Clone, PartialEq, Eq, Insertable)]
#[diesel(table_name = crate::schema::webhook_events)]
pub struct NewWebhookEvent {
    pub id: String,
    pub tenant_id: String,
    pub event_type: String,
    pub install_id: Option<String>,
    pub payload: String,
    pub created_at: i64,
}

/// One event for one endpoint: its attempts and where it stands (`pending`, `delivered`,
/// `failed`).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = crate::schema::webhook_deliveries, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct WebhookDelivery {
    pub endpoint_id: String,
    pub event_seq: i64,
    pub tenant_id: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    /// Retries stop (the delivery fails) once the retry window counted from here has passed;
    /// the event's time, or the time of a replay.
    pub retry_from: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<i64>,
    pub delivered_at: Option<i64>,
}

/// A SMART Backend Services key of a connector setup: public JWK in clear, private key sealed.
/// `Debug` shows only the size of the sealed key.
#[derive(Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = setup_signing_keys, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct SigningKeyRow {
    /// The JWK `kid`: random, public.
    pub kid: String,
    pub tenant_id: String,
    pub connector_id: String,
    /// Opaque id of the setup's hosted JWK Set (`/jwks/{jwks_id}.json`).
    pub jwks_id: String,
    /// `RS384` or `ES384`.
    pub alg: String,
    /// JSON object of the public JWK members.
    pub public_jwk: String,
    /// PKCS#8 PEM sealed with the key ring (AAD `signing_key:{tenant}:{connector}:{kid}`).
    pub private_key: Vec<u8>,
    /// `generated` or `uploaded`.
    pub origin: String,
    /// Epoch ms from which the key signs (the newest such key of the set wins).
    pub active_from: i64,
    /// Epoch ms from which the key is no longer published; None while not retiring.
    pub retire_at: Option<i64>,
    pub created_at: i64,
}

impl fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRow")
            .field("kid", &self.kid)
            .field("tenant_id", &self.tenant_id)
            .field("connector_id", &self.connector_id)
            .field("alg", &self.alg)
            .field("private_key", &Redacted(self.private_key.len()))
            .field("origin", &self.origin)
            .field("active_from", &self.active_from)
            .field("retire_at", &self.retire_at)
            .finish_non_exhaustive()
    }
}

/// A cached SMART discovery document of one FHIR base (public metadata, shown as is).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = smart_discovery, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct Discovery {
    pub tenant_id: String,
    pub connector_id: String,
    pub fhir_base: String,
    pub document: String,
    pub fetched_at: i64,
    pub expires_at: i64,
}

/// A setup's CapabilityStatement check (issue 12): the declared search parameters the server
/// does not list, as JSON, or why its `metadata` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = crate::schema::setup_capability_checks, check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct CapabilityCheck {
    pub tenant_id: String,
    pub connector_id: String,
    pub fhir_base: String,
    pub warnings: String,
    pub error: Option<String>,
    pub checked_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packed record gives back every field as it was given: present, absent (`None`) and
    /// empty texts in every position, the first and the last among them.
    #[test]
    fn an_audit_record_gives_back_what_it_was_made_of() {
        let full = NewAuditEvent {
            id: "aud_1",
            tenant_id: "ten_a",
            at: i64::MIN,
            kind: "method_call",
            action: "get_patient",
            api_key_id: Some("key_1"),
            account_id: Some("acc"),
            install_id: Some("ins_1"),
            connector_id: Some("canvas"),
            status: 502,
            code: Some("upstream_error"),
            upstream_status: Some(500),
            duration_ms: Some(i64::MAX),
            request_id: Some("req_1"),
            patient_hash: Some("ab"),
        };
        let sparse = NewAuditEvent {
            id: "",
            kind: "admin",
            api_key_id: None,
            account_id: Some(""),
            install_id: None,
            connector_id: None,
            code: None,
            upstream_status: None,
            duration_ms: None,
            request_id: Some("é 漢字"),
            patient_hash: None,
            ..full
        };
        let empty_last = NewAuditEvent {
            tenant_id: "",
            patient_hash: Some(""),
            ..sparse
        };
        for e in [full, sparse, empty_last] {
            assert_eq!(AuditRecord::new(&e).as_new(), e);
        }
        let debug = format!("{:?}", AuditRecord::new(&full));
        assert!(debug.contains("aud_1") && !debug.contains("req_1") && !debug.contains("ab\""));
    }
}
