//! Method calls, the hot path: [`MethodService`]. The install is taken from the prepared-install
//! cache (see `cache`) or prepared from its row; its token comes from the [`Keeper`] when it is
//! due for refresh. A call then costs no database round trip and no JSON tree.

use crate::cache::{InstallCache, Prepared};
use crate::error::ServiceError;
use crate::resolve::Resolver;
use crate::tenant::TenantCtx;
use crate::tokens::{Keeper, Refreshed};
use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Instant;
use switchboard_config::Settings;
use switchboard_core::{AccountId, ErrorCode, InstallId, InstallStatus, MethodId};
use switchboard_crypto::KeyRing;
use switchboard_db::repo::installs;
use switchboard_db::Db;
use switchboard_engine::{EngineError, MethodCall};
use switchboard_metrics::Cache;
use switchboard_outbound::Outbound;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MethodIn {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    pub max_pages: Option<u32>,
    /// The FHIR resource of a write method (`create_observation`...): checked against the
    /// method's declared `body` (resourceType, required elements) before anything is sent.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub body: Option<Value>,
}

pub(crate) fn engine_error(e: EngineError) -> ServiceError {
    use EngineError as E;
    let upstream = |code: ErrorCode, detail: String, issues: Vec<Value>, retry: Option<u64>| {
        ServiceError::Upstream {
            code,
            detail,
            retry_after_secs: retry,
            issues,
        }
    };
    let issues_of = |issues: &[switchboard_engine::OperationOutcomeIssue]| -> Vec<Value> {
        issues
            .iter()
            .filter_map(|i| serde_json::to_value(i).ok())
            .collect()
    };
    match e {
        E::NotFound { issues } => upstream(
            ErrorCode::UpstreamNotFound,
            "the EHR has no such resource".into(),
            issues_of(&issues),
            None,
        ),
        E::Forbidden { issues } => upstream(
            ErrorCode::UpstreamForbidden,
            "the EHR refused access (check the app's scopes and the user's rights)".into(),
            issues_of(&issues),
            None,
        ),
        E::SearchTooBroad { .. } => upstream(
            ErrorCode::SearchTooBroad,
            "the search matches more records than the EHR returns (Epic caps at 100); add criteria to narrow it".into(),
            vec![],
            None,
        ),
        E::Rejected { status, issues } => upstream(
            ErrorCode::UpstreamRejected,
            format!("the EHR rejected the request (HTTP {status})"),
            issues_of(&issues),
            None,
        ),
        E::Unavailable { retry_after, .. } => upstream(
            ErrorCode::UpstreamUnavailable,
            "the EHR is unavailable or rate limiting; retry later".into(),
            vec![],
            Some(retry_after.map(|d| d.as_secs().max(1)).unwrap_or(5)),
        ),
        E::UpstreamStatus { status, issues } => upstream(
            ErrorCode::UpstreamError,
            format!("the EHR failed (HTTP {status})"),
            issues_of(&issues),
            None,
        ),
        E::Timeout => upstream(
            ErrorCode::UpstreamTimeout,
            "the EHR did not answer in time".into(),
            vec![],
            None,
        ),
        E::TooLarge { .. } => upstream(
            ErrorCode::UpstreamTooLarge,
            "the EHR's response is larger than upstream.max_response_bytes".into(),
            vec![],
            None,
        ),
        E::NotAllowed(why) => upstream(ErrorCode::UpstreamNotAllowed, why.to_string(), vec![], None),
        E::UpstreamNotJson { .. } => upstream(
            ErrorCode::UpstreamError,
            "the EHR answered with something that is not JSON".into(),
            vec![],
            None,
        ),
        E::ForeignNextLink => upstream(
            ErrorCode::UpstreamError,
            "the EHR's next-page link points outside its FHIR base; paging stopped".into(),
            vec![],
            None,
        ),
        E::WriteOutcomeUnknown { timed_out } => upstream(
            if timed_out {
                ErrorCode::WriteOutcomeUnknownTimeout
            } else {
                ErrorCode::WriteOutcomeUnknown
            },
            "the write was sent but the EHR's answer was lost or failed, so it may or may not have been applied; it was not retried. Check upstream (for example by identifier) before sending it again, or resend with the same Idempotency-Key".into(),
            vec![],
            None,
        ),
        E::Unauthorized => ServiceError::InstallNotAuthorized {
            status: InstallStatus::Authorized.as_str(),
            detail: "the EHR rejected the access token".into(),
        },
        other => upstream(ErrorCode::UpstreamError, other.to_string(), vec![], None),
    }
}

/// What a call learnt on its way, for its audit record (also when it fails).
#[derive(Debug, Default)]
struct Seen {
    connector_id: Option<String>,
    /// The EHR's HTTP status of the last attempt (`None`: no answer).
    upstream_status: Option<u16>,
    /// A Bulk Data kick-off's job URL (the call answers 202 with `Location`).
    job_location: Option<String>,
}

/// How long an Idempotency-Key answers with its first result (24 h).
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// Longest Idempotency-Key (characters).
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// A method call's answer: the response body `{"status":..,"data":..,"pages":..}`, and whether
/// it is the stored first result of an earlier call with the same Idempotency-Key and request
/// (no upstream call was made; the API says `Idempotent-Replayed: true`).
#[derive(Debug)]
pub struct MethodReply {
    pub body: Bytes,
    pub replayed: bool,
    /// A `bulk_export` kick-off: the job's URL (path). The API answers 202 with `Location`.
    pub location: Option<String>,
}

/// A call's input with its Idempotency-Key header.
struct KeyedInput<'a> {
    input: MethodIn,
    idempotency_key: Option<&'a str>,
}

enum Claim {
    Claimed,
    Replay(Bytes),
}

/// 1 to 255 visible ASCII characters (a UUID is typical).
fn check_idempotency_key(key: &str) -> Result<(), ServiceError> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_CHARS
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ServiceError::InvalidRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"
        )));
    }
    Ok(())
}

/// Hex SHA-256 of the method id and the canonical body (compact JSON, keys sorted).
fn request_hash(method_id: &MethodId, body: &switchboard_engine::WriteBody) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(method_id.as_str().as_bytes());
    h.update(b"\n");
    h.update(body.bytes());
    hex::encode(h.finalize())
}

/// AAD of a stored response: `idempotency:<install_id>:<key>` (key-rotation registry).
pub fn idempotency_aad(install_id: &str, key: &str) -> String {
    format!("idempotency:{install_id}:{key}")
}

/// Method calls on installs.
pub struct MethodService {
    pub(crate) settings: Arc<Settings>,
    pub(crate) db: Db,
    pub(crate) crypto: Arc<KeyRing>,
    pub(crate) outbound: Outbound,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) cache: Arc<InstallCache>,
    pub(crate) tokens: Arc<Keeper>,
    pub(crate) audit: Arc<crate::audit::AuditLog>,
    pub(crate) limits: Arc<crate::limits::OutboundLimits>,
}

/// The patient a call is about, by parameter: `patient` or `subject` (searches), or the `id`
/// of `get_patient`; for a write without such a parameter, the body's Patient reference
/// (`subject.reference`, or `patient.reference` as AllergyIntolerance and Immunization name
/// it). Only its keyed hash is recorded (see [`crate::audit::patient_key`]).
fn patient_param<'a>(method_id: &MethodId, input: &'a MethodIn) -> Option<&'a str> {
    let params = &input.params;
    let name = if method_id.as_str() == "get_patient" {
        "id"
    } else if params.contains_key("patient") {
        "patient"
    } else {
        "subject"
    };
    params
        .get(name)
        .and_then(Value::as_str)
        .or_else(|| body_patient(input.body.as_ref()?))
}

/// The Patient a FHIR resource is about: its `subject` or `patient` reference when that names
/// a Patient (a subject may be a Group or a Device: not a patient, no hash).
fn body_patient(body: &Value) -> Option<&str> {
    ["subject", "patient"]
        .iter()
        .filter_map(|k| body.get(k)?.get("reference")?.as_str())
        .find(|r| crate::audit::patient_key(r).is_some())
}

/// Refuses, before anything is sent, a method whose declared scope the install was not granted
/// (SMART v1, v2 or Epic's API names; see `switchboard_auth::scopes`). The permission needed is
/// the method's interaction: a search (`paging = "fhir_bundle"`) needs `s`, another GET `r`,
/// POST `c`, PUT/PATCH `u`, DELETE `d`. Unknown grants (static bearer tokens, no scope stored)
/// are not checked.
fn check_granted_scope(
    p: &Prepared,
    method: &switchboard_connector::CompiledMethod,
) -> Result<(), ServiceError> {
    let (Some(granted), Some(declared)) = (p.granted_scope.as_deref(), method.def.scope.as_deref())
    else {
        return Ok(());
    };
    use switchboard_connector::{HttpVerb, Paging};
    let interaction = match (method.def.verb, method.def.paging) {
        (HttpVerb::Get, Paging::FhirBundle) => 's',
        (HttpVerb::Get, Paging::None) => 'r',
        (HttpVerb::Post, _) => 'c',
        (HttpVerb::Put | HttpVerb::Patch, _) => 'u',
        (HttpVerb::Delete, _) => 'd',
    };
    if switchboard_auth::scopes::covers(granted, declared, Some(interaction)) {
        Ok(())
    } else {
        Err(ServiceError::InsufficientScope(format!(
            "method '{}' needs scope `{declared}`, which this install was not granted; request it in the connector's scopes setting and authorize the install again",
            method.def.id
        )))
    }
}

impl MethodService {
    /// A usable access token for a method call: the cached one while it is fresh, otherwise
    /// the result of the (single) refresh.
    pub(crate) async fn ensure_token(
        &self,
        p: Arc<Prepared>,
    ) -> Result<Arc<Prepared>, ServiceError> {
        self.tokens.note_used(&p.id);
        let now = self.tokens.now_ms();
        if p.bearer.is_some() && !self.tokens.needs_refresh(p.expires_at, p.obtained_at) {
            return Ok(p);
        }
        if !p.can_refresh() {
            if p.bearer.is_some() && p.expires_at.is_none_or(|e| e > now) {
                return Ok(p);
            }
            return Err(ServiceError::InstallNotAuthorized {
                status: InstallStatus::NeedsReauthorization.as_str(),
                detail: "the access token expired and this install has no refresh token; re-authorize with POST .../authorize".into(),
            });
        }
        self.refresh_install(&p.id, p.token_version).await
    }

    /// Refreshes once for everyone who saw `seen_version`, then prepares the result.
    pub(crate) async fn refresh_install(
        &self,
        install_id: &str,
        seen_version: i64,
    ) -> Result<Arc<Prepared>, ServiceError> {
        let refreshed = self
            .tokens
            .refresh(install_id, seen_version, |row| self.prepare_row(row))
            .await?;
        match refreshed {
            Refreshed::Cached(p) | Refreshed::Row(p) => Ok(p),
        }
    }

    /// Builds (and caches) the prepared form of an install row.
    /// The install from the database, prepared and cached; single-flight per install
    /// ([`crate::cache::InstallCache::get_or_load`]). Not scoped to a tenant: callers check.
    pub(crate) async fn load_install(
        &self,
        install_id: &str,
    ) -> Result<Arc<Prepared>, ServiceError> {
        self.cache
            .get_or_load(install_id, async {
                let id = install_id.to_owned();
                let row = self
                    .db
                    .run(move |conn| installs::find_by_id(conn, &id))
                    .await?
                    .ok_or_else(|| ServiceError::NotFound("install not found".into()))?;
                self.prepare_row(row).await
            })
            .await
    }

    pub(crate) async fn prepare_row(
        &self,
        row: switchboard_db::Install,
    ) -> Result<Arc<Prepared>, ServiceError> {
        let resolved = self.resolver.resolve_row(&row).await?;
        let auth_kind = resolved.auth.kind();
        let tokens = crate::sealing::open_tokens(&self.crypto, &row)?;
        let bearer = match &resolved.auth {
            switchboard_connector::AuthDef::StaticBearer(s) => {
                Some(SecretString::from(resolved.render(&s.token, None)?))
            }
            _ => tokens.access,
        };
        let headers = switchboard_engine::static_headers(&resolved.connector, &resolved.ctx)
            .map_err(|e| ServiceError::internal(e.to_string()))?;
        let search_params = resolved
            .connector
            .render_search_params(&resolved.ctx)
            .map_err(|e| ServiceError::internal(format!("search_params: {e}")))?;
        let p = Arc::new(Prepared {
            status: row.status,
            status_error: row.last_error.clone(),
            id: row.id,
            tenant_id: row.tenant_id,
            account_id: row.account_id,
            connector: resolved.connector,
            auth_kind,
            fhir_base: resolved.fhir_base,
            headers,
            bearer,
            expires_at: row.token_expires_at,
            obtained_at: row.last_refresh_at,
            token_version: row.token_version,
            has_refresh_token: row.refresh_token.is_some(),
            granted_scope: row.scopes.clone(),
            search_params,
            loaded_at: Instant::now(),
        });
        self.cache.put(p.clone());
        Ok(p)
    }

    async fn prepared(
        &self,
        t: &TenantCtx,
        account_id: &str,
        install_id: &str,
    ) -> Result<Arc<Prepared>, ServiceError> {
        let not_found = || ServiceError::NotFound("install not found".into());
        let cached = self.cache.get(install_id);
        switchboard_metrics::cache_lookup(Cache::Install, cached.is_some());
        let p = match cached {
            Some(p) => p,
            None => self.load_install(install_id).await?,
        };
        if p.tenant_id != t.tenant_id || p.account_id != account_id {
            return Err(not_found());
        }
        Ok(p)
    }

    /// `POST .../methods/{method}`: validate, authenticate, call, page, map errors. Returns the
    /// response body `{"status":..,"data":..,"pages":..}` ready to send. Every call, whatever
    /// its outcome, leaves one audit record (no parameter value: the patient as a keyed hash).
    ///
    /// `idempotency_key` (the `Idempotency-Key` header) makes a write safe to resend: see
    /// [`MethodReply::replayed`]. It is ignored on reads.
    pub async fn call_method(
        &self,
        t: &TenantCtx,
        account_id: &AccountId,
        install_id: &InstallId,
        method_id: &MethodId,
        input: MethodIn,
        idempotency_key: Option<&str>,
    ) -> Result<MethodReply, ServiceError> {
        let started = Instant::now();
        let patient = patient_param(method_id, &input).map(str::to_owned);
        let mut seen = Seen::default();
        let result = self
            .call_method_inner(
                t,
                account_id,
                install_id,
                method_id,
                KeyedInput {
                    input,
                    idempotency_key,
                },
                &mut seen,
            )
            .await;
        let location = seen.job_location.take();
        let reply = |(body, _, replayed): (Bytes, u16, bool)| MethodReply {
            body,
            replayed,
            location: location.clone(),
        };
        if !self.audit.enabled() {
            return result.map(reply);
        }
        let patient_hash = match patient {
            Some(p) => match self.audit.patient_hash(t.tenant_id(), &p).await {
                Ok(h) => Some(h),
                // Without its patient the record would mislead: fail or drop, as configured.
                Err(e) => return self.audit.unrecordable(e).and(result.map(reply)),
            },
            None => None,
        };
        let (status, code, upstream_status) = match &result {
            // A replay made no upstream call.
            Ok((_, _, true)) => (200, None, None),
            Ok((_, upstream, false)) => (
                if location.is_some() { 202 } else { 200 },
                None,
                Some(i64::from(*upstream)),
            ),
            Err(e) => (
                e.code().status(),
                Some(e.code().code()),
                seen.upstream_status.map(i64::from),
            ),
        };
        let id = crate::audit::AuditLog::new_id();
        self.audit.record(switchboard_db::NewAuditEvent {
            id: &id,
            tenant_id: t.tenant_id(),
            at: switchboard_core::now_ms(),
            kind: "method_call",
            action: method_id.as_str(),
            api_key_id: Some(t.key_id()),
            account_id: Some(account_id.as_str()),
            install_id: Some(install_id.as_str()),
            connector_id: seen.connector_id.as_deref(),
            status: i64::from(status),
            code,
            upstream_status,
            duration_ms: i64::try_from(started.elapsed().as_millis()).ok(),
            request_id: t.request_id(),
            patient_hash: patient_hash.as_deref(),
        })?;
        result.map(reply)
    }

    async fn call_method_inner(
        &self,
        t: &TenantCtx,
        account_id: &AccountId,
        install_id: &InstallId,
        method_id: &MethodId,
        request: KeyedInput<'_>,
        seen: &mut Seen,
    ) -> Result<(Bytes, u16, bool), ServiceError> {
        let KeyedInput {
            input,
            idempotency_key,
        } = request;
        let p = self.prepared(t, account_id, install_id).await?;
        let connector = p.connector.clone();
        seen.connector_id = Some(connector.id.to_string());
        let method = connector
            .method(method_id.as_str())
            .ok_or_else(|| ServiceError::UnknownMethod(method_id.to_string()))?;
        let params =
            switchboard_engine::validate_params(method, &input.params).map_err(|errs| {
                ServiceError::InvalidParams(
                    errs.into_iter()
                        .map(|e| crate::FieldError::new(e.field, e.message))
                        .collect(),
                )
            })?;
        let body =
            switchboard_engine::validate_body(method, input.body.as_ref()).map_err(|errs| {
                ServiceError::InvalidParams(
                    errs.into_iter()
                        .map(|e| crate::FieldError::new(e.field, e.message))
                        .collect(),
                )
            })?;
        let writes = body.is_some() && !method.verb().idempotent();
        let max_pages = match input.max_pages {
            Some(0) => {
                return Err(ServiceError::InvalidRequest(
                    "max_pages must be at least 1".into(),
                ))
            }
            Some(n) => n.min(self.settings.upstream.max_pages),
            None => 1,
        };
        if p.status != InstallStatus::Authorized {
            return Err(crate::tokens::not_authorized_parts(
                p.status,
                p.status_error.as_deref(),
                &p.account_id,
                &p.id,
            ));
        }
        check_granted_scope(&p, method)?;
        if method.kind() == switchboard_connector::MethodKind::BulkExport {
            let accepted = self
                .kick_off(p, &params, method_id, &mut seen.upstream_status)
                .await?;
            let body = serde_json::to_vec(&accepted).map_err(ServiceError::internal)?;
            seen.job_location = Some(accepted.status_url);
            return Ok((Bytes::from(body), 202, false));
        }
        // A write with an Idempotency-Key: claim the key first (or answer from its record).
        let key = match (idempotency_key, &body) {
            (Some(key), Some(b)) if writes => {
                check_idempotency_key(key)?;
                match self
                    .claim_key(&p.tenant_id, &p.id, key, method_id, b)
                    .await?
                {
                    Claim::Replay(bytes) => return Ok((bytes, 0, true)),
                    Claim::Claimed => Some(key),
                }
            }
            _ => None,
        };
        let install = p.id.clone();
        let result = self
            .run_upstream(p, &params, body.as_ref(), max_pages, writes, seen)
            .await;
        if let Some(key) = key {
            self.settle_key(&install, key, result.as_ref().ok().map(|(b, _)| b))
                .await;
        }
        result.map(|(b, status)| (b, status, false))
    }

    /// Authenticates and runs the call upstream (one refresh and resend on a 401).
    async fn run_upstream(
        &self,
        p: Arc<Prepared>,
        params: &switchboard_engine::ValidParams<'_>,
        body: Option<&switchboard_engine::WriteBody>,
        max_pages: u32,
        writes: bool,
        seen: &mut Seen,
    ) -> Result<(Bytes, u16), ServiceError> {
        let connector = p.connector.clone();
        let p = self.ensure_token(p).await?;
        self.limits
            .acquire(&connector, crate::limits::Outgoing::Call, &p.id)
            .await?;
        // One deadline for the call's upstream work: every page and every retry of both
        // rounds. A refresh between the rounds is not cut short (it must commit what the
        // provider issued), but its time counts.
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_millis(self.settings.upstream.call_deadline_ms);
        let mut attempt = p;
        for round in 0..2 {
            let bearer = attempt
                .bearer
                .as_ref()
                .ok_or_else(|| ServiceError::internal("authorized install without a token"))?;
            let result = tokio::time::timeout_at(
                deadline,
                switchboard_engine::execute(
                    &self.outbound,
                    MethodCall {
                        fhir_base: &attempt.fhir_base,
                        params,
                        headers: &attempt.headers,
                        bearer: bearer.expose_secret(),
                        max_pages,
                        search_params: &attempt.search_params,
                        body,
                    },
                ),
            )
            .await
            .map_err(|_| {
                if writes {
                    return engine_error(EngineError::WriteOutcomeUnknown { timed_out: true });
                }
                ServiceError::Upstream {
                code: ErrorCode::UpstreamTimeout,
                detail: format!(
                    "the EHR did not complete the call within upstream.call_deadline_ms ({} ms, all pages and retries together)",
                    self.settings.upstream.call_deadline_ms
                ),
                retry_after_secs: None,
                issues: vec![],
            }})?;
            if let Err(e) = &result {
                // The EHR's status of the last attempt, for the audit record (never its body).
                seen.upstream_status = e.upstream_status();
            }
            match result {
                Ok(out) => return Ok((out.to_response_body(), out.status)),
                Err(EngineError::Unauthorized) if round == 0 && attempt.can_refresh() => {
                    tracing::info!(install = %attempt.id, "upstream answered 401; refreshing once");
                    let refreshed = self
                        .refresh_install(&attempt.id, attempt.token_version)
                        .await?;
                    if refreshed.token_version == attempt.token_version {
                        // No new token (the token endpoint failed transiently and the refresh
                        // kept the current one): resending the refused token is pointless, and
                        // the install is not at fault, so never ask for re-authorization.
                        return Err(ServiceError::Upstream {
                            code: ErrorCode::UpstreamUnavailable,
                            detail: "the EHR rejected the access token and its token endpoint did not issue a new one; retry later".into(),
                            retry_after_secs: Some(5),
                            issues: vec![],
                        });
                    }
                    attempt = refreshed;
                }
                Err(e) => return Err(engine_error(e)),
            }
        }
        Err(engine_error(EngineError::Unauthorized))
    }

    /// Claims `key` on the install for this request, or finds who holds it: the same request
    /// done within 24 h is replayed, another request is 422, one still running is 409.
    async fn claim_key(
        &self,
        tenant_id: &str,
        install_id: &str,
        key: &str,
        method_id: &MethodId,
        body: &switchboard_engine::WriteBody,
    ) -> Result<Claim, ServiceError> {
        use switchboard_db::repo::idempotency;
        let hash = request_hash(method_id, body);
        let now = self.tokens.now_ms();
        let (tid, iid, k, h) = (
            tenant_id.to_owned(),
            install_id.to_owned(),
            key.to_owned(),
            hash.clone(),
        );
        let found = self
            .db
            .run(move |conn| {
                // Purge on access: records older than the window answer nothing any more.
                idempotency::purge_install(conn, &iid, now - IDEMPOTENCY_WINDOW_MS)?;
                if idempotency::claim(conn, &tid, &iid, &k, &h, now)? {
                    return Ok(None);
                }
                idempotency::find(conn, &iid, &k)
            })
            .await?;
        let Some(rec) = found else {
            return Ok(Claim::Claimed);
        };
        if rec.request_hash != hash {
            return Err(ServiceError::IdempotencyKeyReused);
        }
        match (rec.status.as_str(), rec.response) {
            (idempotency::DONE, Some(sealed)) => {
                let plain = self
                    .crypto
                    .decrypt(&sealed, idempotency_aad(install_id, key))?;
                Ok(Claim::Replay(Bytes::from(plain)))
            }
            _ => Err(ServiceError::IdempotencyKeyInFlight {
                retry_after_secs: 1,
            }),
        }
    }

    /// Records the outcome of a keyed call: its response sealed (`done`), or the key released
    /// when it failed (errors are not stored: resending with the key runs the call again).
    async fn settle_key(&self, install_id: &str, key: &str, response: Option<&Bytes>) {
        use switchboard_db::repo::idempotency;
        let sealed = response.map(|b| self.crypto.encrypt(b, idempotency_aad(install_id, key)));
        let (iid, k) = (install_id.to_owned(), key.to_owned());
        let res = self
            .db
            .run(move |conn| match sealed {
                Some(blob) => idempotency::complete(conn, &iid, &k, &blob),
                None => idempotency::release(conn, &iid, &k),
            })
            .await;
        if let Err(e) = res {
            // The call's own outcome stands; the key stays claimed until the window ends.
            tracing::warn!(install = %install_id, error = %e, "could not record the idempotency key outcome");
        }
    }
}
