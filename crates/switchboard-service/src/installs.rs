//! Installs: one connector in one account. Creation resolves the merged settings (connector
//! defaults, tenant setup, install overrides), then per auth type: starts an authorization-code
//! flow (state + PKCE, stored hashed/encrypted), fetches a first client-credentials token, or
//! accepts a static bearer token. Deletion revokes tokens upstream where declared.

use crate::cache::InstallCache;
use crate::error::ServiceError;
use crate::limits::Outgoing;
use crate::pagination::{self, InstallsQuery, PageIn};
use crate::resolve::{Resolved, Resolver};
use crate::return_url::{matches_prefix, tenant_prefix_allowed, validate_return_prefix};
use crate::settings::{self, Layer};
use crate::tenant::TenantCtx;
use crate::webhooks::{EventType, InstallRef};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use switchboard_auth::TokenTypeHint;
use switchboard_config::Settings;
use switchboard_connector::{AuthDef, AuthKind, Connector};
use switchboard_core::{ms_to_rfc3339, now_ms, AccountId, IdKind, InstallId, InstallStatus};
use switchboard_crypto::KeyRing;
use switchboard_db::repo::{installs, oauth_states, tenants, webhooks};
use switchboard_db::{Db, NewInstall, NewOAuthState, TokenWrite};
use switchboard_outbound::Outbound;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"connector": "canvas", "auth_type": "static_bearer"}))]
pub struct InstallIn {
    pub connector: String,
    /// One of the connector's auth types; the first one when absent.
    pub auth_type: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub settings: Map<String, Value>,
    pub return_url: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeIn {
    pub return_url: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstallOut {
    pub id: String,
    pub account: String,
    pub connector: String,
    pub auth_type: String,
    pub status: String,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub context: Option<Value>,
    /// The scope string the EHR granted, as it wrote it (Epic answers with its API names); the
    /// requested scopes when the token response named none (RFC 6749 §5.1).
    pub granted_scope: Option<String>,
    /// SMART launch context from the token response: `patient`, `encounter`, `fhirUser`
    /// (stored encrypted).
    #[schema(value_type = Option<Object>)]
    pub launch: Option<Value>,
    pub last_error: Option<String>,
    pub last_refresh_at: Option<String>,
    pub last_refresh_error: Option<String>,
    /// The install's own setting overrides; secrets masked.
    #[schema(value_type = Object)]
    pub settings: Value,
    pub return_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One page of `GET /v1/accounts/{account}/installs` or `GET /v1/installs`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstallList {
    pub installs: Vec<InstallOut>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstallCreated {
    #[serde(flatten)]
    pub install: InstallOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
}

/// `launch` as the API shows it: the SMART names of the launch context fields.
fn launch_of(context: &Value) -> Option<Value> {
    let mut out = Map::new();
    for (from, to) in [
        ("patient", "patient"),
        ("encounter", "encounter"),
        ("fhir_user", "fhirUser"),
    ] {
        if let Some(v) = context.get(from).filter(|v| !v.is_null()) {
            out.insert(to.to_owned(), v.clone());
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

fn auth_kind_of(connector: &Connector, requested: Option<&str>) -> Result<AuthDef, ServiceError> {
    let def = &connector.def;
    match requested {
        None => {
            def.auth.first().cloned().ok_or_else(|| {
                ServiceError::UnsupportedAuthType("connector declares no auth".into())
            })
        }
        Some(name) => {
            let kind = AuthKind::parse(name).ok_or_else(|| {
                ServiceError::UnsupportedAuthType(format!("unknown auth_type '{name}'"))
            })?;
            def.auth
                .iter()
                .find(|a| a.kind() == kind)
                .cloned()
                .ok_or_else(|| {
                    ServiceError::UnsupportedAuthType(format!(
                        "connector '{}' does not support auth_type '{name}'",
                        def.id
                    ))
                })
        }
    }
}

/// Accounts and their installs (creation, authorization, reading, deletion with revocation).
pub struct InstallService {
    pub(crate) settings: Arc<Settings>,
    pub(crate) db: Db,
    pub(crate) crypto: Arc<KeyRing>,
    pub(crate) outbound: Outbound,
    pub(crate) redirect_uri: String,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) cache: Arc<InstallCache>,
    pub(crate) audit: Arc<crate::audit::AuditLog>,
    pub(crate) limits: Arc<crate::limits::OutboundLimits>,
    pub(crate) outbox: Arc<crate::webhooks::Outbox>,
    pub(crate) keys: Arc<crate::signing_keys::SetupKeys>,
}

impl InstallService {
    pub(crate) fn check_return_url(
        &self,
        allowed_tenant: &[String],
        url: &str,
    ) -> Result<(), ServiceError> {
        validate_return_prefix(url)?;
        let security = &self.settings.security;
        // A tenant prefix counts only while it is under what the operator allows.
        let tenant = allowed_tenant.iter().filter(|p| {
            tenant_prefix_allowed(
                p,
                &security.allowed_return_urls,
                &security.tenant_return_url_origins,
            )
        });
        let allowed = security
            .allowed_return_urls
            .iter()
            .chain(tenant)
            .any(|p| matches_prefix(url, p));
        if allowed {
            Ok(())
        } else {
            Err(ServiceError::InvalidReturnUrl(
                "return_url does not start with an allowed prefix (security.allowed_return_urls or the tenant's allowed_return_urls)".into(),
            ))
        }
    }

    pub(crate) async fn tenant_return_prefixes(
        &self,
        t: &TenantCtx,
    ) -> Result<Vec<String>, ServiceError> {
        let tenant = t.tenant_id.clone();
        let row = self
            .db
            .run(move |conn| tenants::find(conn, &tenant))
            .await?
            .ok_or_else(|| ServiceError::NotFound("tenant not found".into()))?;
        Ok(serde_json::from_str(&row.allowed_return_urls).unwrap_or_default())
    }

    /// The shared HTTP client for a request to `url`, after the outbound policy check (422
    /// `upstream_not_allowed` naming `field`).
    fn outbound_for(&self, field: &str, url: &url::Url) -> Result<&reqwest::Client, ServiceError> {
        self.outbound.client_for(url).map_err(|e| {
            ServiceError::UpstreamNotAllowed(vec![crate::error::FieldError::new(
                field,
                e.to_string(),
            )])
        })
    }

    /// The quotas a new install would exceed, checked before anything is sent or written:
    /// installs per tenant, and for the authorization-code flow the pending authorization
    /// requests (its first state). The insert re-checks the install count in its transaction.
    async fn check_install_quotas(
        &self,
        tenant_id: &str,
        auth: &AuthDef,
    ) -> Result<(), ServiceError> {
        let limits = &self.settings.limits;
        let (installs_max, states_max) = (
            limits.max_installs_per_tenant,
            limits.max_pending_oauth_states_per_tenant,
        );
        let wants_state = matches!(auth, AuthDef::Oauth2AuthorizationCode(_));
        let tenant = tenant_id.to_owned();
        let now = now_ms();
        let (installs_now, states_now) = self
            .db
            .run(move |conn| {
                let i = if installs_max > 0 {
                    installs::count(conn, &tenant)?
                } else {
                    0
                };
                let s = if wants_state && states_max > 0 {
                    oauth_states::count_pending(conn, &tenant, now)?
                } else {
                    0
                };
                Ok((i, s))
            })
            .await?;
        if installs_max > 0 && installs_now >= installs_max {
            return Err(ServiceError::QuotaExceeded {
                quota: "installs",
                limit: installs_max,
            });
        }
        if wants_state && states_max > 0 && states_now >= states_max {
            return Err(ServiceError::QuotaExceeded {
                quota: "pending_oauth_states",
                limit: states_max,
            });
        }
        Ok(())
    }

    pub async fn create_install(
        &self,
        t: &TenantCtx,
        account_id: &AccountId,
        input: InstallIn,
    ) -> Result<InstallCreated, ServiceError> {
        let account = self.find_account(t, account_id).await?;
        let connector = self.resolver.connector(&input.connector)?;
        let auth = auth_kind_of(&connector, input.auth_type.as_deref())?;
        let overrides = settings::validate_input(&connector.def, &input.settings, Layer::Install)?;
        if let Some(r) = &input.return_url {
            let prefixes = self.tenant_return_prefixes(t).await?;
            self.check_return_url(&prefixes, r)?;
        }
        self.resolver.check_setting_urls(&connector, &overrides)?;
        let resolved = self
            .resolver
            .resolve(&t.tenant_id, connector.clone(), auth.clone(), &overrides)
            .await?;
        if let AuthDef::Oauth2AuthorizationCode(_) = &auth {
            // RFC 9207: without a known issuer the code flow must not start (and the user must
            // not log in only to be refused at the callback). Checked before anything is written.
            resolved.expected_issuer()?;
            resolved.authorize_endpoint()?;
        }
        self.resolver
            .check_resolved_urls(&resolved, &self.redirect_uri)?;
        self.check_install_quotas(&t.tenant_id, &auth).await?;
        let id = IdKind::Install.generate();
        let now = now_ms();
        let sealed = settings::seal(
            &self.crypto,
            &connector.def,
            &overrides,
            &settings::install_aad(&id),
        );
        let mut row = NewInstall {
            id: id.clone(),
            tenant_id: t.tenant_id.clone(),
            account_id: account.id.clone(),
            connector_id: connector.def.id.clone(),
            auth_type: auth.kind().as_str().to_owned(),
            status: InstallStatus::PendingAuthorization,
            settings: sealed,
            return_url: input.return_url.clone(),
            created_at: now,
            updated_at: now,
        };
        let mut first_tokens = None;
        match &auth {
            AuthDef::Oauth2AuthorizationCode(_) => {}
            AuthDef::StaticBearer(_) => {
                row.status = InstallStatus::Authorized;
            }
            AuthDef::Oauth2ClientCredentials(_) | AuthDef::Oauth2BackendServices(_) => {
                // The first token is fetched before anything is written: a bad secret (or a
                // refused assertion) leaves no install behind.
                let client = resolved
                    .token_client(&self.redirect_uri)?
                    .ok_or_else(|| ServiceError::internal("client credentials without client"))?;
                let scopes = resolved.requested_scopes()?;
                self.resolver
                    .check_upstream_url("token_url", &client.token_url)?;
                let http = self.outbound_for("token_url", &client.token_url)?;
                self.limits
                    .acquire(&connector, Outgoing::Token, &t.tenant_id)
                    .await?;
                let tokens = match &auth {
                    AuthDef::Oauth2BackendServices(_) => {
                        let assertion = self
                            .keys
                            .assertion(&t.tenant_id, &resolved, &client)
                            .await?;
                        client
                            .client_credentials_with_assertion(http, &scopes, &assertion)
                            .await
                            .map_err(crate::signing_keys::first_token_error)?
                    }
                    _ => client
                        .client_credentials(http, &scopes)
                        .await
                        .map_err(crate::tokens::first_token_error)?,
                };
                let sealed = crate::sealing::seal_tokens(&self.crypto, &id, &tokens, now_ms());
                first_tokens = Some(TokenWrite {
                    access_token: sealed.access,
                    refresh_token: sealed.refresh,
                    expires_at: sealed.expires_at,
                    // RFC 6749 §5.1: an omitted scope means the requested scope was granted.
                    scopes: sealed.scopes.or(Some(scopes).filter(|s| !s.is_empty())),
                    context: sealed.context,
                    status: InstallStatus::Authorized,
                    last_error: None,
                    last_refresh_at: Some(now),
                    last_refresh_error: None,
                    now,
                });
            }
        }
        let install_row = row;
        // Created authorized (static bearer, client credentials): `install.authorized` with it.
        let authorized = (install_row.status == InstallStatus::Authorized
            || first_tokens.is_some())
        .then(|| {
            self.outbox.install_event(
                EventType::InstallAuthorized,
                InstallRef {
                    tenant_id: &install_row.tenant_id,
                    account_id: &install_row.account_id,
                    install_id: &install_row.id,
                    connector_id: &install_row.connector_id,
                    status: InstallStatus::Authorized.as_str(),
                },
            )
        });
        let limit = self.settings.limits.max_installs_per_tenant;
        let inserted = self
            .db
            .run(move |conn| {
                conn.write_transaction(|conn| {
                    if limit > 0 && installs::count(conn, &install_row.tenant_id)? >= limit {
                        return Ok(false);
                    }
                    installs::insert(conn, &install_row)?;
                    if let Some(write) = &first_tokens {
                        installs::store_tokens(conn, &install_row.id, 0, write)?;
                    }
                    if let Some(event) = &authorized {
                        webhooks::emit(conn, event)?;
                    }
                    Ok(true)
                })
            })
            .await?;
        if !inserted {
            return Err(ServiceError::QuotaExceeded {
                quota: "installs",
                limit,
            });
        }
        self.outbox.committed();
        let authorize_url = match &auth {
            AuthDef::Oauth2AuthorizationCode(_) => Some(
                self.begin_authorization(t, &id, &resolved, input.return_url.as_deref())
                    .await?,
            ),
            _ => None,
        };
        let row = self.find_install(t, &account.id, &id).await?;
        let target = crate::audit::Target {
            account_id: Some(row.account_id.clone()),
            install_id: Some(row.id.clone()),
            connector_id: Some(row.connector_id.clone()),
        };
        self.audit
            .admin(&t.tenant_id, Some(t), "install.created", 201, target)?;
        let install = self.install_out(row);
        Ok(InstallCreated {
            install,
            authorize_url,
        })
    }

    /// Starts (or restarts) an authorization-code flow: a fresh single-use state bound to this
    /// install and its token endpoint, a PKCE verifier stored encrypted, and the id of the API
    /// key that asked (`t`'s tenant owns the install).
    pub(crate) async fn begin_authorization(
        &self,
        t: &TenantCtx,
        install_id: &str,
        resolved: &Resolved,
        return_url: Option<&str>,
    ) -> Result<String, ServiceError> {
        let AuthDef::Oauth2AuthorizationCode(a) = &resolved.auth else {
            return Err(ServiceError::UnsupportedAuthType(
                "this install does not use the authorization-code flow".into(),
            ));
        };
        let redirect_uri = self.redirect_uri.clone();
        let state = switchboard_auth::new_state();
        let state_hash = switchboard_auth::hash_state(&state);
        let pkce = switchboard_auth::new_pkce();
        let authorize_endpoint = resolved.authorize_endpoint()?.to_string();
        let client = resolved
            .token_client(&redirect_uri)?
            .ok_or_else(|| ServiceError::internal("authorization code without token client"))?;
        self.resolver
            .check_upstream_url("token_url", &client.token_url)?;
        let scopes = resolved.render(&a.scopes, None)?;
        let mut extra = BTreeMap::new();
        for (k, v) in &a.authorize_params {
            extra.insert(k.clone(), resolved.render(v, None)?);
        }
        let (expected_issuer, _) = resolved.expected_issuer()?;
        let expected_issuer = Some(expected_issuer);
        let url = switchboard_auth::authorize_url(&switchboard_auth::AuthorizeRequest {
            authorize_url: &authorize_endpoint,
            client_id: &client.client_id,
            redirect_uri: &redirect_uri,
            scopes: &scopes,
            state: &state,
            code_challenge: &pkce.challenge,
            extra: &extra,
        })
        .map_err(|e| {
            ServiceError::InvalidSettings(vec![crate::error::FieldError::new(
                "authorize_url",
                e.to_string(),
            )])
        })?;
        let now = now_ms();
        let verifier = self.crypto.encrypt(
            pkce.verifier.expose_secret().as_bytes(),
            format!("state:{state_hash}:verifier").as_bytes(),
        );
        let row = NewOAuthState {
            state_hash,
            install_id: install_id.to_owned(),
            tenant_id: t.tenant_id.clone(),
            verifier,
            token_url: client.token_url.to_string(),
            redirect_uri,
            expected_issuer,
            return_url: return_url.map(str::to_owned),
            expires_at: now + (self.settings.oauth.state_ttl_secs as i64) * 1000,
            created_at: now,
            api_key_id: Some(t.key_id.clone()),
        };
        let limit = self.settings.limits.max_pending_oauth_states_per_tenant;
        let inserted = self
            .db
            .run(move |conn| {
                oauth_states::purge_expired(conn, now)?;
                conn.write_transaction(|conn| {
                    if limit > 0 && oauth_states::count_pending(conn, &row.tenant_id, now)? >= limit
                    {
                        return Ok(false);
                    }
                    oauth_states::insert(conn, &row).map(|()| true)
                })
            })
            .await?;
        if !inserted {
            return Err(ServiceError::QuotaExceeded {
                quota: "pending_oauth_states",
                limit,
            });
        }
        Ok(url.to_string())
    }

    /// `POST .../authorize`: a new authorize URL for an existing authorization-code install.
    pub async fn authorize_install(
        &self,
        t: &TenantCtx,
        account_id: &AccountId,
        install_id: &InstallId,
        input: AuthorizeIn,
    ) -> Result<String, ServiceError> {
        let row = self.find_install(t, account_id, install_id).await?;
        if let Some(r) = &input.return_url {
            let prefixes = self.tenant_return_prefixes(t).await?;
            self.check_return_url(&prefixes, r)?;
        }
        let return_url = input.return_url.or(row.return_url.clone());
        let resolved = self.resolver.resolve_row(&row).await?;
        if return_url != row.return_url {
            let (tenant, acc, id, r) = (
                row.tenant_id.clone(),
                row.account_id.clone(),
                row.id.clone(),
                return_url.clone(),
            );
            self.db
                .run(move |conn| {
                    installs::set_return_url(conn, &tenant, &acc, &id, r.as_deref(), now_ms())
                })
                .await?;
        }
        self.begin_authorization(t, &row.id, &resolved, return_url.as_deref())
            .await
    }

    pub(crate) async fn find_install(
        &self,
        t: &TenantCtx,
        account_id: &str,
        install_id: &str,
    ) -> Result<switchboard_db::Install, ServiceError> {
        let (tenant, acc, id) = (
            t.tenant_id.clone(),
            account_id.to_owned(),
            install_id.to_owned(),
        );
        self.db
            .run(move |conn| installs::find(conn, &tenant, &acc, &id))
            .await?
            .ok_or_else(|| ServiceError::NotFound("install not found".into()))
    }

    fn install_out(&self, row: switchboard_db::Install) -> InstallOut {
        let context = crate::sealing::open_context(&self.crypto, &row.id, row.context.as_deref());
        let overrides = self
            .resolver
            .connector(&row.connector_id)
            .ok()
            .and_then(|c| {
                settings::open(&self.crypto, &row.settings, &settings::install_aad(&row.id))
                    .ok()
                    .map(|v| settings::masked(&c.def, &v))
            })
            .unwrap_or(Value::Object(Map::new()));
        InstallOut {
            scopes: row
                .scopes
                .as_deref()
                .map(|s| s.split_whitespace().map(str::to_owned).collect()),
            expires_at: row.token_expires_at.map(ms_to_rfc3339),
            context: context.clone(),
            granted_scope: row.scopes.clone(),
            launch: context.as_ref().and_then(launch_of),
            last_error: row.last_error,
            last_refresh_at: row.last_refresh_at.map(ms_to_rfc3339),
            last_refresh_error: row.last_refresh_error,
            settings: overrides,
            return_url: row.return_url,
            created_at: ms_to_rfc3339(row.created_at),
            updated_at: ms_to_rfc3339(row.updated_at),
            id: row.id,
            account: row.account_id,
            connector: row.connector_id,
            auth_type: row.auth_type,
            status: row.status.to_string(),
        }
    }

    pub async fn get_install(
        &self,
        t: &TenantCtx,
        account_id: &AccountId,
        install_id: &InstallId,
    ) -> Result<InstallOut, ServiceError> {
        let row = self.find_install(t, account_id, install_id).await?;
        Ok(self.install_out(row))
    }

    /// One page of the account's installs, oldest first (404 if the account does not exist).
    pub async fn list_installs(
        &self,
        t: &TenantCtx,
        account_id: &AccountId,
        page: PageIn,
    ) -> Result<InstallList, ServiceError> {
        let account = self.find_account(t, account_id).await?;
        let filter = installs::InstallFilter {
            account_id: Some(account.id),
            ..Default::default()
        };
        self.install_page(t, filter, page).await
    }

    /// One page of the tenant's installs across its accounts, oldest first, filtered by
    /// status, connector and account (an unknown connector or account matches nothing).
    pub async fn list_tenant_installs(
        &self,
        t: &TenantCtx,
        query: InstallsQuery,
    ) -> Result<InstallList, ServiceError> {
        pagination::id_filter("connector", query.connector.as_ref())?;
        pagination::id_filter("account", query.account.as_ref())?;
        let page = query.page();
        let filter = installs::InstallFilter {
            account_id: query.account,
            status: query.status,
            connector_id: query.connector,
        };
        self.install_page(t, filter, page).await
    }

    async fn install_page(
        &self,
        t: &TenantCtx,
        filter: installs::InstallFilter,
        page: PageIn,
    ) -> Result<InstallList, ServiceError> {
        let scope = pagination::installs_scope(
            filter.account_id.as_deref(),
            filter.status,
            filter.connector_id.as_deref(),
        );
        let ring = &self.crypto;
        let start = pagination::start(ring, &t.tenant_id, &scope, &page)?;
        let tenant = t.tenant_id.clone();
        let page = self
            .db
            .run(move |conn| {
                installs::list_page(conn, &tenant, &filter, start.after.as_ref(), start.limit)
            })
            .await?;
        Ok(InstallList {
            next_cursor: page
                .next
                .map(|after| pagination::seal(ring, &t.tenant_id, &scope, &after)),
            installs: page.rows.into_iter().map(|r| self.install_out(r)).collect(),
        })
    }

    /// Revokes the install's tokens at the provider where the connector declares revocation
    /// (a failure is logged, never keeps the install alive), then erases the install with its
    /// tokens, secrets and pending authorization states.
    pub async fn delete_install(
        &self,
        t: &TenantCtx,
        account_id: &AccountId,
        install_id: &InstallId,
    ) -> Result<(), ServiceError> {
        let row = self.find_install(t, account_id, install_id).await?;
        if let Err(e) = self.revoke_upstream(&row).await {
            tracing::warn!(install = %row.id, error = %e, "token revocation failed; erasing the install anyway");
        }
        let (tenant, acc, id) = (
            row.tenant_id.clone(),
            row.account_id.clone(),
            row.id.clone(),
        );
        let event = self.outbox.install_event(
            EventType::InstallDeleted,
            InstallRef {
                status: "deleted",
                ..InstallRef::from(&row)
            },
        );
        self.db
            .run(move |conn| {
                conn.write_transaction(|conn| {
                    oauth_states::delete_for_install(conn, &id)?;
                    let deleted = installs::delete(conn, &tenant, &acc, &id)?;
                    if deleted {
                        webhooks::emit(conn, &event)?;
                    }
                    Ok(deleted)
                })
            })
            .await?;
        self.outbox.committed();
        self.cache.remove(&row.id);
        let target = crate::audit::Target {
            account_id: Some(row.account_id),
            install_id: Some(row.id),
            connector_id: Some(row.connector_id),
        };
        self.audit
            .admin(&t.tenant_id, Some(t), "install.deleted", 204, target)
    }

    async fn revoke_upstream(&self, row: &switchboard_db::Install) -> Result<(), ServiceError> {
        let resolved = self.resolver.resolve_row(row).await?;
        let Some(url) = resolved.revocation_url()? else {
            return Ok(());
        };
        let Some(client) = resolved.token_client(&self.redirect_uri)? else {
            return Ok(());
        };
        let http = self.outbound_for("revocation_url", &url)?;
        let tokens = crate::sealing::open_tokens(&self.crypto, row)?;
        if let Some(rt) = &tokens.refresh {
            client
                .revoke(http, &url, rt, TokenTypeHint::RefreshToken)
                .await
                .map_err(|e| ServiceError::internal(e.to_string()))?;
        }
        if let Some(at) = &tokens.access {
            client
                .revoke(http, &url, at, TokenTypeHint::AccessToken)
                .await
                .map_err(|e| ServiceError::internal(e.to_string()))?;
        }
        Ok(())
    }
}
