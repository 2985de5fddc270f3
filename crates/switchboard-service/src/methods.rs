//! Method calls, the hot path. An install is prepared once (merged settings rendered, FHIR base
//! parsed, headers built, access token decrypted) and cached for `tokens.install_cache_ttl_ms`;
//! every change this process makes to an install drops its entry, other replicas' changes are
//! seen within the TTL. A call then costs no database round trip and no JSON tree.

use crate::{ServiceError, Services, TenantCtx};
use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use switchboard_connector::{AuthKind, Connector};
use switchboard_core::{AccountId, ErrorCode, InstallId, InstallStatus, MethodId};
use switchboard_db::repo::installs;
use switchboard_engine::{EngineError, MethodCall};
use url::Url;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MethodIn {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    pub max_pages: Option<u32>,
}

/// An install ready for calls.
pub(crate) struct Prepared {
    pub id: String,
    pub tenant_id: String,
    pub account_id: String,
    pub connector: Arc<Connector>,
    pub auth_kind: AuthKind,
    pub status: InstallStatus,
    pub status_error: Option<String>,
    pub fhir_base: Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub bearer: Option<SecretString>,
    pub expires_at: Option<i64>,
    pub obtained_at: Option<i64>,
    pub token_version: i64,
    pub has_refresh_token: bool,
    loaded_at: Instant,
}

impl Prepared {
    pub fn can_refresh(&self) -> bool {
        match self.auth_kind {
            AuthKind::Oauth2ClientCredentials => true,
            AuthKind::Oauth2AuthorizationCode => self.has_refresh_token,
            AuthKind::StaticBearer => false,
        }
    }
}

pub(crate) struct InstallCache {
    ttl: Duration,
    map: RwLock<HashMap<String, Arc<Prepared>>>,
}

impl InstallCache {
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            ttl: Duration::from_millis(ttl_ms),
            map: RwLock::new(HashMap::new()),
        }
    }

    fn get(&self, id: &str) -> Option<Arc<Prepared>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .filter(|p| p.loaded_at.elapsed() < self.ttl)
            .cloned()
    }

    /// Any cached entry, however old (used after waiting for a refresh in this process).
    pub fn get_any(&self, id: &str) -> Option<Arc<Prepared>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn put(&self, p: Arc<Prepared>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() > 50_000 {
            map.retain(|_, v| v.loaded_at.elapsed() < self.ttl);
        }
        map.insert(p.id.clone(), p);
    }

    pub fn remove(&self, id: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    pub fn clear(&self) {
        self.map.write().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

fn engine_error(e: EngineError) -> ServiceError {
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
        E::Unauthorized => ServiceError::InstallNotAuthorized {
            status: InstallStatus::Authorized.as_str(),
            detail: "the EHR rejected the access token".into(),
        },
        other => upstream(ErrorCode::UpstreamError, other.to_string(), vec![], None),
    }
}

impl Services {
    /// Builds (and caches) the prepared form of an install row.
    pub(crate) async fn prepare_row(
        &self,
        row: switchboard_db::Install,
    ) -> Result<Arc<Prepared>, ServiceError> {
        let resolved = self.resolve_row(&row).await?;
        let auth_kind = resolved.auth.kind();
        let tokens = crate::tokens::open_tokens(&self.inner.crypto, &row)?;
        let bearer = match &resolved.auth {
            switchboard_connector::AuthDef::StaticBearer(s) => {
                Some(SecretString::from(resolved.render(&s.token, None)?))
            }
            _ => tokens.access,
        };
        let headers = switchboard_engine::static_headers(&resolved.connector, &resolved.ctx)
            .map_err(|e| ServiceError::internal(e.to_string()))?;
        let p = Arc::new(Prepared {
            status: InstallStatus::parse(&row.status).unwrap_or(InstallStatus::Error),
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
            loaded_at: Instant::now(),
        });
        self.inner.installs.put(p.clone());
        Ok(p)
    }

    async fn prepared(
        &self,
        t: &TenantCtx,
        account_id: &str,
        install_id: &str,
    ) -> Result<Arc<Prepared>, ServiceError> {
        let not_found = || ServiceError::NotFound("install not found".into());
        let p = match self.inner.installs.get(install_id) {
            Some(p) => p,
            None => {
                let id = install_id.to_owned();
                let row = self
                    .inner
                    .db
                    .run(move |conn| installs::find_by_id(conn, &id))
                    .await?
                    .ok_or_else(not_found)?;
                if row.tenant_id != t.tenant_id {
                    return Err(not_found());
                }
                self.prepare_row(row).await?
            }
        };
        if p.tenant_id != t.tenant_id || p.account_id != account_id {
            return Err(not_found());
        }
        Ok(p)
    }

    /// `POST .../methods/{method}`: validate, authenticate, call, page, map errors. Returns the
    /// response body `{"status":..,"data":..,"pages":..}` ready to send.
    pub async fn call_method(
        &self,
        t: &TenantCtx,
        account_id: &AccountId,
        install_id: &InstallId,
        method_id: &MethodId,
        input: MethodIn,
    ) -> Result<Bytes, ServiceError> {
        let p = self.prepared(t, account_id, install_id).await?;
        let connector = p.connector.clone();
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
        let max_pages = match input.max_pages {
            Some(0) => {
                return Err(ServiceError::InvalidRequest(
                    "max_pages must be at least 1".into(),
                ))
            }
            Some(n) => n.min(self.inner.settings.upstream.max_pages),
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
        let p = self.ensure_token(p).await?;
        let mut attempt = p;
        for round in 0..2 {
            let bearer = attempt
                .bearer
                .as_ref()
                .ok_or_else(|| ServiceError::internal("authorized install without a token"))?;
            let result = switchboard_engine::execute(
                &self.inner.outbound,
                MethodCall {
                    fhir_base: &attempt.fhir_base,
                    params: &params,
                    headers: &attempt.headers,
                    bearer: bearer.expose_secret(),
                    max_pages,
                },
            )
            .await;
            match result {
                Ok(out) => return Ok(out.to_response_body()),
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
}
