//! Agent sessions (issue 15): [`AgentSessionService`]. A session gives an MCP client bearer access
//! to a chosen set of one install's methods (read-only unless `allow_writes`) until it expires
//! or is revoked. The token (`sba_<secret>`) is shown once; only its SHA-256 is stored (256 bits
//! of entropy, so a fast hash is enough, as for API keys). Every `/mcp` request looks the
//! session up again (one indexed read, no cache), so a revocation or an expiry takes effect on
//! the next request; the install itself (deleted, needing re-authorization) is checked by the
//! method path on every tool call. Expiry reads the injected [`Clock`].
//!
//! A tool call runs `MethodService::call_method` with a [`TenantCtx`] whose key id is the
//! session id (`ags_…`): the audit record's `api_key_id` names the session it came through.

use crate::clock::Clock;
use crate::error::{FieldError, ServiceError};
use crate::pagination::{self, PageIn};
use crate::tenant::TenantCtx;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use switchboard_config::McpSettings;
use switchboard_connector::{Catalog, MethodDef};
use switchboard_core::{
    ms_to_rfc3339, random_token, AccountId, AgentSessionId, IdKind, InstallId, MethodId,
};
use switchboard_crypto::KeyRing;
use switchboard_db::repo::agent_sessions::{self as repo, AgentSession};
use switchboard_db::repo::installs;
use switchboard_db::Db;

const TOKEN_PREFIX: &str = "sba_";

/// `POST /v1/agent-sessions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSessionIn {
    pub account_id: AccountId,
    pub install_id: InstallId,
    /// Method ids of the install's connector the agent may call (its MCP tools). Absent: every
    /// read method, and every write method too when `allow_writes`.
    pub methods: Option<Vec<String>>,
    /// Whether write methods (`create_observation`, …) may be listed. Default false.
    #[serde(default)]
    pub allow_writes: bool,
    /// Seconds until the session expires (default `mcp.session_default_ttl_secs`, at most
    /// `mcp.session_max_ttl_secs`).
    pub expires_in: Option<u64>,
}

/// A session as lists show it (never its token).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentSessionOut {
    pub id: String,
    pub account_id: String,
    pub install_id: String,
    pub connector: String,
    pub methods: Vec<String>,
    pub allow_writes: bool,
    pub created_at: String,
    pub expires_at: String,
    /// Whether `expires_at` has passed (the session is refused then).
    pub expired: bool,
}

/// `POST /v1/agent-sessions` 201: the session and its token, shown only here.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentSessionCreated {
    pub id: String,
    /// The bearer token for `/mcp`: returned once, never stored.
    pub token: String,
    pub account_id: String,
    pub install_id: String,
    pub connector: String,
    pub methods: Vec<String>,
    pub allow_writes: bool,
    pub created_at: String,
    pub expires_at: String,
}

/// One page of `GET /v1/agent-sessions`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentSessionList {
    pub agent_sessions: Vec<AgentSessionOut>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// An authenticated agent session: what `/mcp` may offer and call.
#[derive(Debug, Clone)]
pub struct AgentCtx {
    /// The session's tenant; its key id is the session id.
    pub tenant: TenantCtx,
    pub session_id: String,
    pub account_id: AccountId,
    pub install_id: InstallId,
    pub connector_id: String,
    pub methods: Vec<String>,
    pub allow_writes: bool,
}

impl AgentCtx {
    /// Whether the session offers `method` (a listed method; a write only with allow_writes).
    pub fn offers(&self, method: &MethodDef) -> bool {
        self.methods.contains(&method.id) && (self.allow_writes || !method.verb.writes())
    }

    /// The same session for the request `request_id` (for the audit trail).
    pub fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.tenant = self.tenant.with_request_id(request_id);
        self
    }
}

/// One MCP tool: a method the session offers.
#[derive(Debug, Clone)]
pub struct AgentTool {
    pub method: MethodId,
    pub name: String,
    pub description: String,
    /// [`switchboard_connector::method_input_schema`] of the method.
    pub input_schema: serde_json::Value,
    pub writes: bool,
    /// Whether the method's upstream request has a body (the `body` argument).
    pub has_body: bool,
    /// Whether the method follows FHIR paging (the `max_pages` argument).
    pub paged: bool,
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Agent sessions: create, list, revoke, and the authentication of every `/mcp` request.
pub struct AgentSessionService {
    pub(crate) db: Db,
    pub(crate) catalog: Catalog,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) settings: McpSettings,
    /// Seals the list cursors.
    pub(crate) crypto: Arc<KeyRing>,
    pub(crate) audit: Arc<crate::audit::AuditLog>,
}

impl AgentSessionService {
    pub async fn create(
        &self,
        t: &TenantCtx,
        input: AgentSessionIn,
    ) -> Result<AgentSessionCreated, ServiceError> {
        let ttl_secs = input
            .expires_in
            .unwrap_or(self.settings.session_default_ttl_secs);
        let mut errors = Vec::new();
        if ttl_secs == 0 || ttl_secs > self.settings.session_max_ttl_secs {
            errors.push(FieldError::new(
                "expires_in",
                format!(
                    "must be 1 to {} seconds (mcp.session_max_ttl_secs)",
                    self.settings.session_max_ttl_secs
                ),
            ));
        }
        let (tenant, acc, ins) = (
            t.tenant_id.clone(),
            input.account_id.to_string(),
            input.install_id.to_string(),
        );
        let install = self
            .db
            .run(move |conn| installs::find(conn, &tenant, &acc, &ins))
            .await?
            .ok_or_else(|| ServiceError::NotFound("install not found".into()))?;
        let connector = self
            .catalog
            .get(&install.connector_id)
            .ok_or_else(|| ServiceError::UnknownConnector(install.connector_id.clone()))?;
        let methods: Vec<String> = match &input.methods {
            None => connector
                .def
                .methods
                .iter()
                .filter(|m| input.allow_writes || !m.verb.writes())
                .map(|m| m.id.clone())
                .collect(),
            Some(names) => {
                if names.is_empty() {
                    errors.push(FieldError::new(
                        "methods",
                        "name at least one method (or leave it out for every read method)",
                    ));
                }
                let mut chosen: Vec<String> = Vec::new();
                for (i, name) in names.iter().enumerate() {
                    let field = format!("methods[{i}]");
                    match connector.def.methods.iter().find(|m| m.id == *name) {
                        None => errors.push(FieldError::new(
                            field,
                            format!("the connector {} has no such method", connector.def.id),
                        )),
                        Some(m) if m.verb.writes() && !input.allow_writes => {
                            errors.push(FieldError::new(
                                field,
                                "this method writes to the EHR; set allow_writes to offer it",
                            ))
                        }
                        Some(m) if !chosen.contains(&m.id) => chosen.push(m.id.clone()),
                        Some(_) => {}
                    }
                }
                chosen
            }
        };
        if !errors.is_empty() {
            return Err(ServiceError::InvalidAgentSession(errors));
        }
        let now = self.clock.now_ms();
        let expires_at =
            now.saturating_add(i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX));
        let id = IdKind::AgentSession.generate();
        let token = format!("{TOKEN_PREFIX}{}", random_token(32));
        let row = AgentSession {
            id: id.clone(),
            tenant_id: t.tenant_id.clone(),
            account_id: install.account_id.clone(),
            install_id: install.id.clone(),
            connector_id: install.connector_id.clone(),
            token_hash: hash_token(&token),
            methods: serde_json::to_string(&methods).map_err(ServiceError::internal)?,
            allow_writes: i64::from(input.allow_writes),
            created_at: now,
            expires_at,
            revoked_at: None,
        };
        let limit = self.settings.max_sessions_per_tenant;
        let inserted = self
            .db
            .run(move |conn| repo::insert_within_quota(conn, &row, limit, now))
            .await?;
        if !inserted {
            return Err(ServiceError::QuotaExceeded {
                quota: "agent_sessions",
                limit,
            });
        }
        self.audit.admin(
            &t.tenant_id,
            Some(t),
            &format!("agent_session.created:{id}"),
            201,
            crate::audit::Target {
                account_id: Some(install.account_id.clone()),
                install_id: Some(install.id.clone()),
                connector_id: Some(install.connector_id.clone()),
            },
        )?;
        Ok(AgentSessionCreated {
            id,
            token,
            account_id: install.account_id,
            install_id: install.id,
            connector: install.connector_id,
            methods,
            allow_writes: input.allow_writes,
            created_at: ms_to_rfc3339(now),
            expires_at: ms_to_rfc3339(expires_at),
        })
    }

    /// One page of the tenant's sessions that are not revoked (expired ones included, marked),
    /// oldest first.
    pub async fn list(
        &self,
        t: &TenantCtx,
        page: PageIn,
    ) -> Result<AgentSessionList, ServiceError> {
        const SCOPE: &str = "agent_sessions";
        let ring = &self.crypto;
        let start = pagination::start(ring, &t.tenant_id, SCOPE, &page)?;
        let tenant = t.tenant_id.clone();
        let page = self
            .db
            .run(move |conn| repo::list_page(conn, &tenant, start.after.as_ref(), start.limit))
            .await?;
        let now = self.clock.now_ms();
        Ok(AgentSessionList {
            next_cursor: page
                .next
                .map(|after| pagination::seal(ring, &t.tenant_id, SCOPE, &after)),
            agent_sessions: page
                .rows
                .into_iter()
                .map(|s| AgentSessionOut {
                    methods: serde_json::from_str(&s.methods).unwrap_or_default(),
                    allow_writes: s.allow_writes != 0,
                    created_at: ms_to_rfc3339(s.created_at),
                    expires_at: ms_to_rfc3339(s.expires_at),
                    expired: s.expires_at <= now,
                    id: s.id,
                    account_id: s.account_id,
                    install_id: s.install_id,
                    connector: s.connector_id,
                })
                .collect(),
        })
    }

    /// Revokes a session: its next `/mcp` request is refused (401).
    pub async fn revoke(&self, t: &TenantCtx, id: &AgentSessionId) -> Result<(), ServiceError> {
        let (tenant, sid) = (t.tenant_id.clone(), id.to_string());
        let now = self.clock.now_ms();
        let revoked = self
            .db
            .run(move |conn| repo::revoke(conn, &tenant, &sid, now))
            .await?;
        if !revoked {
            return Err(ServiceError::NotFound("agent session not found".into()));
        }
        self.audit.admin(
            &t.tenant_id,
            Some(t),
            &format!("agent_session.revoked:{id}"),
            204,
            Default::default(),
        )
    }

    /// Resolves a bearer token to its live session. Unknown, malformed, revoked and expired
    /// tokens all answer `None`.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<AgentCtx>, ServiceError> {
        if !presented.starts_with(TOKEN_PREFIX) || presented.len() > 200 {
            return Ok(None);
        }
        let hash = hash_token(presented);
        let found = self
            .db
            .run(move |conn| repo::find_active_by_hash(conn, &hash))
            .await?;
        let Some(s) = found else {
            return Ok(None);
        };
        if s.expires_at <= self.clock.now_ms() {
            return Ok(None);
        }
        let (Ok(account_id), Ok(install_id)) = (
            AccountId::parse(&s.account_id),
            InstallId::parse(&s.install_id),
        ) else {
            return Ok(None);
        };
        Ok(Some(AgentCtx {
            tenant: TenantCtx {
                tenant_id: s.tenant_id,
                key_id: s.id.clone(),
                request_id: None,
            },
            session_id: s.id,
            account_id,
            install_id,
            connector_id: s.connector_id,
            methods: serde_json::from_str(&s.methods).unwrap_or_default(),
            allow_writes: s.allow_writes != 0,
        }))
    }

    /// The tools the session offers, in the connector's method order.
    pub fn tools(&self, a: &AgentCtx) -> Vec<AgentTool> {
        let Some(connector) = self.catalog.get(&a.connector_id) else {
            return Vec::new();
        };
        connector
            .def
            .methods
            .iter()
            .filter(|m| a.offers(m))
            .filter_map(|m| {
                Some(AgentTool {
                    method: MethodId::parse(&m.id).ok()?,
                    name: m.id.clone(),
                    description: match &m.description {
                        Some(d) => format!("{}: {d}", m.name),
                        None => m.name.clone(),
                    },
                    input_schema: switchboard_connector::method_input_schema(m),
                    writes: m.verb.writes(),
                    has_body: m.body.is_some(),
                    paged: m.paging == switchboard_connector::Paging::FhirBundle
                        && m.param("max_pages").is_none(),
                })
            })
            .collect()
    }
}
