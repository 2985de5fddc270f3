//! Resolution of an install's effective configuration: the connector from the catalogue, the
//! tenant's setup and the install's overrides merged, required settings checked, the FHIR base
//! rendered and checked against the outbound IP policy. Shared by installs, the callback,
//! setups, method calls and the token endpoint; depends only on leaf modules (settings, error).

use crate::error::ServiceError;
use crate::settings;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::sync::Arc;
use switchboard_auth::{SmartConfiguration, TokenClient};
use switchboard_connector::{AuthDef, AuthKind, Catalog, Connector, TemplateContext};
use switchboard_crypto::KeyRing;
use switchboard_db::repo::{discovery, setups};
use switchboard_db::Db;
use switchboard_outbound::Outbound;
use url::Url;

/// Everything derived from a connector and the merged settings of one install.
pub struct Resolved {
    pub connector: Arc<Connector>,
    pub auth: AuthDef,
    pub fhir_base: Url,
    /// Settings plus the rendered FHIR base, for templates.
    pub ctx: TemplateContext,
    /// The SMART discovery document, when the connector declares `[discovery]` and this auth
    /// type leaves an endpoint or the issuer to it (read through the database cache).
    pub discovered: Option<SmartConfiguration>,
}

/// A declared URL template rendered, else the discovered URL, else a 422 naming the field.
fn declared_or_discovered(
    resolved: &Resolved,
    declared: Option<&String>,
    discovered: Option<&String>,
    field: &str,
    redirect_uri: Option<&str>,
) -> Result<Url, ServiceError> {
    let raw = match (declared, discovered) {
        (Some(t), _) => resolved.render(t, redirect_uri)?,
        (None, Some(u)) => u.clone(),
        (None, None) => {
            return Err(ServiceError::InvalidSettings(vec![
                crate::error::FieldError::new(
                    field,
                    "not declared by the connector and not in the FHIR server's SMART discovery document",
                ),
            ]))
        }
    };
    Url::parse(&raw).map_err(|_| {
        ServiceError::InvalidSettings(vec![crate::error::FieldError::new(
            field,
            format!("the {field} is not a valid URL"),
        )])
    })
}

impl Resolved {
    pub fn render(
        &self,
        template: &str,
        redirect_uri: Option<&str>,
    ) -> Result<String, ServiceError> {
        let ctx = match redirect_uri {
            Some(r) => self.ctx.clone().with_redirect_uri(r),
            None => self.ctx.clone(),
        };
        switchboard_connector::render_str(template, &ctx).map_err(|e| {
            ServiceError::InvalidSettings(vec![crate::error::FieldError::new(
                "settings",
                e.to_string(),
            )])
        })
    }

    /// The token endpoint client of this install's auth type (None for static bearer).
    pub fn token_client(&self, redirect_uri: &str) -> Result<Option<TokenClient>, ServiceError> {
        let (token_url, client_id, secret, client_auth, params) = match &self.auth {
            AuthDef::Oauth2AuthorizationCode(a) => (
                a.token_url.as_ref(),
                &a.client_id,
                a.client_secret.as_ref(),
                a.client_auth,
                &a.token_params,
            ),
            AuthDef::Oauth2ClientCredentials(c) => (
                c.token_url.as_ref(),
                &c.client_id,
                Some(&c.client_secret),
                c.client_auth,
                &c.token_params,
            ),
            AuthDef::Oauth2BackendServices(b) => (
                Some(&b.token_url),
                &b.client_id,
                None,
                // The client authenticates with the assertion (signing_keys), not with these.
                switchboard_connector::model::ClientAuth::None,
                &b.token_params,
            ),
            AuthDef::StaticBearer(_) => return Ok(None),
        };
        let discovered = self
            .discovered
            .as_ref()
            .and_then(|d| d.token_endpoint.as_ref());
        let token_url =
            declared_or_discovered(self, token_url, discovered, "token_url", Some(redirect_uri))?;
        let client_secret = match secret {
            Some(t) => Some(SecretString::from(self.render(t, Some(redirect_uri))?)),
            None => None,
        };
        let mut extra_params = Vec::new();
        for (k, v) in params {
            extra_params.push((k.clone(), self.render(v, Some(redirect_uri))?));
        }
        Ok(Some(TokenClient {
            token_url,
            client_id: self.render(client_id, Some(redirect_uri))?,
            client_secret,
            client_auth,
            extra_params,
        }))
    }

    /// The scopes this install's auth type requests, rendered.
    pub fn requested_scopes(&self) -> Result<String, ServiceError> {
        match &self.auth {
            AuthDef::Oauth2AuthorizationCode(a) => self.render(&a.scopes, None),
            AuthDef::Oauth2ClientCredentials(c) => self.render(&c.scopes, None),
            AuthDef::Oauth2BackendServices(b) => self.render(&b.scopes, None),
            AuthDef::StaticBearer(_) => Ok(String::new()),
        }
    }

    pub fn revocation_url(&self) -> Result<Option<Url>, ServiceError> {
        let t = match &self.auth {
            AuthDef::Oauth2AuthorizationCode(a) => a.revocation_url.as_ref(),
            AuthDef::Oauth2ClientCredentials(c) => c.revocation_url.as_ref(),
            AuthDef::Oauth2BackendServices(b) => b.revocation_url.as_ref(),
            AuthDef::StaticBearer(_) => None,
        };
        match t {
            Some(t) => Ok(Url::parse(&self.render(t, None)?).ok()),
            None => Ok(self
                .discovered
                .as_ref()
                .and_then(|d| d.revocation_endpoint.as_deref())
                .and_then(|u| Url::parse(u).ok())),
        }
    }

    /// The authorization endpoint: declared, else discovered.
    pub fn authorize_endpoint(&self) -> Result<Url, ServiceError> {
        let AuthDef::Oauth2AuthorizationCode(a) = &self.auth else {
            return Err(ServiceError::UnsupportedAuthType(
                "this install does not use the authorization-code flow".into(),
            ));
        };
        let discovered = self
            .discovered
            .as_ref()
            .and_then(|d| d.authorization_endpoint.as_ref());
        declared_or_discovered(
            self,
            a.authorize_url.as_ref(),
            discovered,
            "authorize_url",
            None,
        )
    }

    /// RFC 9207: the expected issuer (declared, else discovered) and whether the server
    /// advertises `authorization_response_iss_parameter_supported`. No known issuer is a 422
    /// naming the settings that locate the server: the code flow must not start.
    pub fn expected_issuer(&self) -> Result<(String, bool), ServiceError> {
        let AuthDef::Oauth2AuthorizationCode(a) = &self.auth else {
            return Err(ServiceError::UnsupportedAuthType(
                "this install does not use the authorization-code flow".into(),
            ));
        };
        let iss_required = self
            .discovered
            .as_ref()
            .is_some_and(|d| d.authorization_response_iss_parameter_supported);
        if let Some(t) = &a.issuer {
            return Ok((self.render(t, None)?, iss_required));
        }
        if let Some(i) = self.discovered.as_ref().and_then(|d| d.issuer.clone()) {
            return Ok((i, iss_required));
        }
        let settings: Vec<&str> = self.connector.def.fhir_base_settings();
        let what = if self.connector.def.discovery.is_some() {
            "the FHIR server's SMART discovery document names no `issuer`"
        } else {
            "the connector declares no issuer and no [discovery]"
        };
        Err(ServiceError::IssuerUnknown(format!(
            "{what}, so the authorization response cannot be checked (RFC 9207) and the code flow cannot start; fix the setting(s) {} so that they point at a server whose discovery document names its issuer",
            settings
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// Turns connector ids and install rows into [`Resolved`] configurations.
pub struct Resolver {
    pub(crate) db: Db,
    pub(crate) crypto: Arc<KeyRing>,
    pub(crate) catalog: Catalog,
    pub(crate) outbound: Outbound,
    /// `oauth.discovery_ttl_secs`, in milliseconds.
    pub(crate) discovery_ttl_ms: i64,
    /// `oauth.discovery_timeout_ms`: the wait for best-effort discovery at setup save.
    pub(crate) discovery_timeout: std::time::Duration,
}

/// A cached `smart_discovery` document: the SMART configuration, or (connectors that declare
/// every endpoint and their issuer) the error of the last best-effort read, stored as
/// `{"discovery_error": "..."}`.
pub(crate) fn cached_document(document: &str) -> Option<Result<SmartConfiguration, String>> {
    let v: serde_json::Value = serde_json::from_str(document).ok()?;
    if let Some(e) = v.get(DISCOVERY_ERROR_KEY) {
        return Some(Err(e.as_str().unwrap_or_default().to_owned()));
    }
    serde_json::from_value(v).ok().map(Ok)
}

/// The key of a stored best-effort discovery failure (see [`cached_document`]).
pub(crate) const DISCOVERY_ERROR_KEY: &str = "discovery_error";

/// Whether some auth type of the connector leaves an endpoint or the issuer to discovery (then
/// discovery is required; otherwise a declared `[discovery]` is best effort).
pub(crate) fn needs_discovery(def: &switchboard_connector::ConnectorDef) -> bool {
    def.discovery.is_some()
        && def.auth.iter().any(|a| {
            a.needs_discovery()
                || matches!(a, AuthDef::Oauth2AuthorizationCode(c) if c.issuer.is_none())
        })
}

impl Resolver {
    /// Merges defaults, the tenant setup and the install overrides, checks that every setting
    /// the auth type and the FHIR base need is present, and renders the FHIR base.
    pub(crate) async fn resolve(
        &self,
        tenant_id: &str,
        connector: Arc<Connector>,
        auth: AuthDef,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Resolved, ServiceError> {
        let setup = self.setup_values(tenant_id, &connector.def.id).await?;
        let merged = switchboard_connector::merge_settings(&connector.def, &setup, overrides);
        let missing = switchboard_connector::missing_for_auth(&connector.def, auth.kind(), &merged);
        if !missing.is_empty() {
            return Err(ServiceError::InvalidSettings(
                missing
                    .into_iter()
                    .map(|k| {
                        crate::error::FieldError::new(
                            k,
                            "required: set it in the connector setup or the install settings",
                        )
                    })
                    .collect(),
            ));
        }
        let base = connector.render_fhir_base(&merged).map_err(|e| {
            ServiceError::InvalidSettings(vec![crate::error::FieldError::new(
                "fhir_base",
                e.to_string(),
            )])
        })?;
        let fhir_base = Url::parse(&base).map_err(|_| {
            ServiceError::InvalidSettings(vec![crate::error::FieldError::new(
                "fhir_base",
                "the settings do not form a valid FHIR base URL",
            )])
        })?;
        self.check_upstream_url("fhir_base", &fhir_base)?;
        let ctx = TemplateContext::new(merged).with_fhir_base(fhir_base.as_str());
        let wants_discovery = auth.needs_discovery()
            || matches!(&auth, AuthDef::Oauth2AuthorizationCode(a) if a.issuer.is_none());
        let discovered = if wants_discovery && connector.def.discovery.is_some() {
            Some(
                self.discovery(tenant_id, &connector, &fhir_base, &ctx, false)
                    .await?,
            )
        } else if connector.def.discovery.is_some() {
            // Every endpoint is declared: discovery is best effort and only its cached result
            // (read when the setup was saved) is used, e.g. for the RFC 9207 `iss` rule.
            self.cached_discovery(tenant_id, &connector.def.id, &fhir_base)
                .await?
        } else {
            None
        };
        Ok(Resolved {
            connector,
            auth,
            fhir_base,
            ctx,
            discovered,
        })
    }

    /// The SMART configuration of `fhir_base` for a tenant's connector: the cached row while it
    /// is fresh (and `refresh` is not set), otherwise read again through the outbound client and
    /// stored. A failure is a 422 `discovery_failed` naming the URL and the status.
    pub(crate) async fn discovery(
        &self,
        tenant_id: &str,
        connector: &Connector,
        fhir_base: &Url,
        ctx: &TemplateContext,
        refresh: bool,
    ) -> Result<SmartConfiguration, ServiceError> {
        let Some(def) = &connector.def.discovery else {
            return Err(ServiceError::internal("connector declares no [discovery]"));
        };
        let (tenant, cid, base) = (
            tenant_id.to_owned(),
            connector.def.id.clone(),
            fhir_base.to_string(),
        );
        let now = switchboard_core::now_ms();
        // A stale document is kept as a fallback: a discovery outage must not break installs
        // that already work (only a forced read, i.e. a setup being saved, reports it).
        let mut stale = None;
        if !refresh {
            let (t, c, b) = (tenant.clone(), cid.clone(), base.clone());
            let cached = self
                .db
                .run(move |conn| discovery::find(conn, &t, &c, &b))
                .await?;
            if let Some(row) = cached {
                if let Some(Ok(cfg)) = cached_document(&row.document) {
                    if row.expires_at > now {
                        return Ok(cfg);
                    }
                    stale = Some(cfg);
                }
            }
        }
        let headers = connector.render_discovery_headers(ctx).map_err(|e| {
            ServiceError::InvalidSettings(vec![crate::error::FieldError::new(
                "discovery.headers",
                e.to_string(),
            )])
        })?;
        let outbound = &self.outbound;
        // Every URL discovery reads (the FHIR base's and the issuer's documents) is checked.
        let http = outbound
            .client_for(fhir_base)
            .map_err(|e| ServiceError::DiscoveryFailed(format!("SMART discovery refused: {e}")))?;
        let cfg = switchboard_auth::discovery::discover(
            http,
            fhir_base,
            &headers,
            def.openid_configuration,
            |u| outbound.check_url(u).map_err(|e| e.to_string()),
        )
        .await;
        let cfg = match cfg {
            Ok(cfg) => cfg,
            Err(e) => {
                tracing::warn!(connector = %cid, error = %e, "SMART discovery failed");
                return match stale {
                    Some(cfg) => Ok(cfg),
                    None => Err(ServiceError::DiscoveryFailed(format!(
                        "SMART discovery failed: {e}"
                    ))),
                };
            }
        };
        let row = switchboard_db::Discovery {
            tenant_id: tenant,
            connector_id: cid,
            fhir_base: base,
            document: serde_json::to_string(&cfg).map_err(ServiceError::internal)?,
            fetched_at: now,
            expires_at: now.saturating_add(self.discovery_ttl_ms),
        };
        self.db
            .run(move |conn| discovery::upsert(conn, &row))
            .await?;
        Ok(cfg)
    }

    /// The cached SMART configuration of `fhir_base` (fresh or stale), without reading it.
    async fn cached_discovery(
        &self,
        tenant_id: &str,
        connector_id: &str,
        fhir_base: &Url,
    ) -> Result<Option<SmartConfiguration>, ServiceError> {
        let (t, c, b) = (
            tenant_id.to_owned(),
            connector_id.to_owned(),
            fhir_base.to_string(),
        );
        let row = self
            .db
            .run(move |conn| discovery::find(conn, &t, &c, &b))
            .await?;
        Ok(row
            .and_then(|r| cached_document(&r.document))
            .and_then(Result::ok))
    }

    /// Best-effort discovery (a connector that declares every endpoint and its issuer), at
    /// setup save: waits at most `oauth.discovery_timeout_ms`; a failure is stored as the
    /// setup's `discovery_error` (URL and status only) and never fails the caller.
    pub(crate) async fn discovery_best_effort(
        &self,
        tenant_id: &str,
        connector: &Connector,
        fhir_base: &Url,
        ctx: &TemplateContext,
    ) -> Result<(), ServiceError> {
        let read = tokio::time::timeout(
            self.discovery_timeout,
            self.discovery(tenant_id, connector, fhir_base, ctx, true),
        )
        .await;
        let error = match read {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(ServiceError::DiscoveryFailed(e))) => e,
            Ok(Err(ServiceError::InvalidSettings(_))) => {
                "SMART discovery skipped: the [discovery] headers could not be rendered".to_owned()
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => format!(
                "SMART discovery failed: {} did not answer within {} ms",
                switchboard_auth::discovery::smart_configuration_url(fhir_base),
                self.discovery_timeout.as_millis()
            ),
        };
        let now = switchboard_core::now_ms();
        let row = switchboard_db::Discovery {
            tenant_id: tenant_id.to_owned(),
            connector_id: connector.def.id.clone(),
            fhir_base: fhir_base.to_string(),
            document: serde_json::json!({ DISCOVERY_ERROR_KEY: error }).to_string(),
            fetched_at: now,
            // Stale at once: nothing reads an error row as a document.
            expires_at: now,
        };
        self.db
            .run(move |conn| discovery::upsert(conn, &row))
            .await?;
        Ok(())
    }

    /// Marks a tenant's cached discovery documents of a connector stale (a token call failed
    /// with an endpoint error: the endpoints may have moved).
    pub(crate) async fn discovery_stale(&self, tenant_id: &str, connector_id: &str) {
        let (t, c) = (tenant_id.to_owned(), connector_id.to_owned());
        if let Err(e) = self
            .db
            .run(move |conn| discovery::mark_stale(conn, &t, &c))
            .await
        {
            tracing::warn!(error = %e, "could not mark discovery stale");
        }
    }

    /// An upstream URL the settings produced must pass the outbound IP policy; a violation is
    /// 422 `upstream_not_allowed`, reported under `field`.
    pub(crate) fn check_upstream_url(&self, field: &str, url: &Url) -> Result<(), ServiceError> {
        self.outbound.check_url(url).map_err(|e| {
            ServiceError::UpstreamNotAllowed(vec![crate::error::FieldError::new(
                field,
                e.to_string(),
            )])
        })
    }

    /// Save-time check of every URL-valued setting in `values` (a setup or install layer)
    /// against the outbound policy: 422 `upstream_not_allowed` naming each refused setting.
    pub(crate) fn check_setting_urls(
        &self,
        connector: &Connector,
        values: &BTreeMap<String, String>,
    ) -> Result<(), ServiceError> {
        let mut refused = Vec::new();
        for def in &connector.def.settings {
            if def.kind != switchboard_connector::SettingType::Url {
                continue;
            }
            let Some(value) = values.get(&def.key) else {
                continue;
            };
            // A value that is no URL at all is the settings validator's to report.
            if let Ok(url) = Url::parse(value) {
                if let Err(e) = self.outbound.check_url(&url) {
                    refused.push(crate::error::FieldError::new(&def.key, e.to_string()));
                }
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::UpstreamNotAllowed(refused))
        }
    }

    /// Save-time check of the URLs an install will call, rendered from its merged settings:
    /// every URL-valued setting, the token URL and the revocation URL (the FHIR base is checked
    /// by [`Resolver::resolve`]).
    pub(crate) fn check_resolved_urls(
        &self,
        resolved: &Resolved,
        redirect_uri: &str,
    ) -> Result<(), ServiceError> {
        self.check_setting_urls(&resolved.connector, &resolved.ctx.settings)?;
        if let Some(client) = resolved.token_client(redirect_uri)? {
            self.check_upstream_url("token_url", &client.token_url)?;
        }
        if let Some(url) = resolved.revocation_url()? {
            self.check_upstream_url("revocation_url", &url)?;
        }
        Ok(())
    }

    /// Resolves a stored install row (decrypting its overrides).
    pub(crate) async fn resolve_row(
        &self,
        row: &switchboard_db::Install,
    ) -> Result<Resolved, ServiceError> {
        let connector = self.connector(&row.connector_id)?;
        let kind = AuthKind::parse(&row.auth_type)
            .ok_or_else(|| ServiceError::internal("stored auth type is unknown"))?;
        let auth = connector
            .def
            .auth
            .iter()
            .find(|a| a.kind() == kind)
            .cloned()
            .ok_or_else(|| {
                ServiceError::UnsupportedAuthType(
                    "the connector no longer supports this install's auth type".into(),
                )
            })?;
        let overrides =
            settings::open(&self.crypto, &row.settings, &settings::install_aad(&row.id))?;
        self.resolve(&row.tenant_id, connector, auth, &overrides)
            .await
    }

    /// The decrypted setup values of a tenant's connector (empty when there is no setup).
    pub(crate) async fn setup_values(
        &self,
        tenant_id: &str,
        connector_id: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, ServiceError> {
        let (tenant, cid) = (tenant_id.to_owned(), connector_id.to_owned());
        let row = self
            .db
            .run(move |conn| setups::find(conn, &tenant, &cid))
            .await?;
        match row {
            Some(r) => settings::open(
                &self.crypto,
                &r.settings,
                &settings::setup_aad(tenant_id, connector_id),
            ),
            None => Ok(Default::default()),
        }
    }

    pub(crate) fn connector(
        &self,
        id: &str,
    ) -> Result<std::sync::Arc<switchboard_connector::Connector>, ServiceError> {
        self.catalog
            .get(id)
            .ok_or_else(|| ServiceError::UnknownConnector(id.to_owned()))
    }
}
