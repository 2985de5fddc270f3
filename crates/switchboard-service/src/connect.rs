//! Connect sessions and the hosted connect page (issue 15). A tenant creates a session for one
//! account and connector (`POST /v1/connect-sessions`) and hands its single-use link to the
//! clinic's EHR admin. The page shows the connector, what it will be able to read and a form for
//! the install-level settings the connector marks as customer-provided; submitting it consumes
//! the link (one conditional UPDATE), creates the install exactly as `POST .../installs` does
//! (same validation, normalisers, return-URL policy, quotas) and hands back the authorize URL.
//! The link token is stored only as its SHA-256. Part of [`InstallService`], like accounts.

use crate::error::{FieldError, ServiceError};
use crate::installs::{InstallIn, InstallService};
use crate::settings::{self, Layer};
use crate::tenant::TenantCtx;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Digest as _;
use std::collections::BTreeMap;
use switchboard_connector::{AuthKind, HttpVerb, SettingType};
use switchboard_core::{ms_to_rfc3339, now_ms, AccountId, ConnectSessionId, IdKind};
use switchboard_db::repo::connect_sessions::{self, ConnectSession, PENDING, USED};

/// `expires_in` when the request names none (seconds).
pub const DEFAULT_EXPIRES_IN_SECS: u64 = 900;
/// The longest a link may live (seconds).
pub const MAX_EXPIRES_IN_SECS: u64 = 1800;
/// The shortest a link may live (seconds): long enough to open an e-mail and read the page.
pub const MIN_EXPIRES_IN_SECS: u64 = 60;
/// Expired sessions stay visible (`GET /v1/connect-sessions/{id}`) this long, then are purged.
const KEEP_EXPIRED_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"account_id": "acme-clinic", "connector": "epic", "return_url": "https://console.example/connected", "expires_in": 900}))]
pub struct ConnectSessionIn {
    /// The account the install will belong to (it must exist).
    pub account_id: AccountId,
    /// The connector to install; it must offer the authorization-code flow.
    pub connector: String,
    /// Where the person lands after the EHR sign-in (`install` and `status` query parameters);
    /// the same prefix policy as an install's `return_url`. Absent: Switchboard's result page.
    pub return_url: Option<String>,
    /// Seconds the link stays valid: 60 to 1800, 900 when absent.
    pub expires_in: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectSessionCreated {
    pub id: String,
    /// The single-use link to hand to the person connecting their EHR (shown only here).
    pub url: String,
    pub expires_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectSessionOut {
    pub id: String,
    pub account: String,
    pub connector: String,
    /// `pending`, `used` or `expired`.
    pub status: String,
    /// The install the link created, once used.
    pub install_id: Option<String>,
    /// That install's status, while it exists.
    pub install_status: Option<String>,
    pub return_url: Option<String>,
    pub expires_at: String,
    pub created_at: String,
    pub used_at: Option<String>,
}

/// One form field of the connect page: an install-level setting the connector marks as
/// customer-provided.
#[derive(Debug, Clone)]
pub struct ConnectField {
    pub key: String,
    pub label: String,
    pub help: Option<String>,
    pub required: bool,
    /// The HTML input type: `url`, `number` or `text`; unused when `options` is not empty.
    pub input: &'static str,
    /// The choices of an enum (or `true`/`false`) setting: a select.
    pub options: Vec<String>,
}

/// What the connect page shows for a pending link.
#[derive(Debug, Clone)]
pub struct ConnectPage {
    pub connector_name: String,
    pub connector_description: Option<String>,
    /// Human labels of what the install will read (`Patients: read, search`).
    pub reads: Vec<String>,
    /// Human labels of what it may create.
    pub writes: Vec<String>,
    pub fields: Vec<ConnectField>,
    pub expires_at_ms: i64,
}

/// A submitted connect form that did not create an install: the page re-renders with these.
#[derive(Debug)]
pub enum ConnectRefusal {
    /// Field errors (shown next to their inputs) and a message for the top of the form.
    Form {
        page: Box<ConnectPage>,
        errors: Vec<FieldError>,
        message: Option<String>,
    },
    /// The link cannot be used (unknown, used, expired) or something failed.
    Error(ServiceError),
}

impl From<ServiceError> for ConnectRefusal {
    fn from(e: ServiceError) -> Self {
        Self::Error(e)
    }
}

fn hash_token(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A link token's plausible shape: what `random_token(32)` makes (43 base64url characters).
fn plausible_token(token: &str) -> bool {
    (20..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

fn status_of(row: &ConnectSession, now: i64) -> &'static str {
    if row.status == USED {
        "used"
    } else if row.expires_at <= now {
        "expired"
    } else {
        "pending"
    }
}

/// A person-readable name for a FHIR resource type.
fn resource_label(resource: &str) -> String {
    let known = [
        ("Patient", "Patient details (name, birth date, contact)"),
        ("Observation", "Observations (vital signs, lab results)"),
        ("Condition", "Conditions (problem list, diagnoses)"),
        ("MedicationRequest", "Medication orders"),
        ("AllergyIntolerance", "Allergies and intolerances"),
        ("Encounter", "Encounters (visits)"),
        ("Immunization", "Immunizations"),
        ("Procedure", "Procedures"),
        ("DiagnosticReport", "Diagnostic reports"),
        ("DocumentReference", "Clinical documents"),
        ("Communication", "Messages"),
        ("Practitioner", "Practitioners"),
        ("Appointment", "Appointments"),
        ("Binary", "Attached files (document contents)"),
    ];
    if let Some((_, label)) = known.iter().find(|(r, _)| *r == resource) {
        return (*label).to_owned();
    }
    // `CarePlan` -> `Care plan`.
    let mut out = String::new();
    for (i, c) in resource.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            out.push(' ');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// What the connector's methods read and create, grouped by resource, in file order.
fn access_labels(def: &switchboard_connector::ConnectorDef) -> (Vec<String>, Vec<String>) {
    let mut reads: Vec<(String, Vec<&'static str>)> = Vec::new();
    let mut writes: Vec<String> = Vec::new();
    for m in &def.methods {
        let resource = m
            .body
            .as_ref()
            .map(|b| b.resource_type.clone())
            .unwrap_or_else(|| m.path.split('/').next().unwrap_or_default().to_owned());
        if resource.is_empty() {
            continue;
        }
        let label = resource_label(&resource);
        if m.body.is_some() {
            if !writes.contains(&label) {
                writes.push(label);
            }
            continue;
        }
        let interaction = if m.verb == HttpVerb::Get && m.path.contains('{') {
            "read"
        } else {
            "search"
        };
        match reads.iter_mut().find(|(l, _)| *l == label) {
            Some((_, kinds)) if !kinds.contains(&interaction) => kinds.push(interaction),
            Some(_) => {}
            None => reads.push((label, vec![interaction])),
        }
    }
    let reads = reads
        .into_iter()
        .map(|(label, kinds)| format!("{label}: {}", kinds.join(", ")))
        .collect();
    (reads, writes)
}

impl InstallService {
    /// `POST /v1/connect-sessions`: a single-use link for `account_id` to install `connector`.
    pub async fn create_connect_session(
        &self,
        t: &TenantCtx,
        input: ConnectSessionIn,
    ) -> Result<ConnectSessionCreated, ServiceError> {
        let expires_in = input.expires_in.unwrap_or(DEFAULT_EXPIRES_IN_SECS);
        if !(MIN_EXPIRES_IN_SECS..=MAX_EXPIRES_IN_SECS).contains(&expires_in) {
            return Err(ServiceError::InvalidRequest(format!(
                "expires_in must be between {MIN_EXPIRES_IN_SECS} and {MAX_EXPIRES_IN_SECS} seconds"
            )));
        }
        let account = self.find_account(t, &input.account_id).await?;
        let connector = self.resolver.connector(&input.connector)?;
        if connector
            .def
            .auth(AuthKind::Oauth2AuthorizationCode)
            .is_none()
        {
            return Err(ServiceError::UnsupportedAuthType(format!(
                "connector '{}' does not offer the authorization-code flow a connect page starts",
                connector.def.id
            )));
        }
        if let Some(r) = &input.return_url {
            let prefixes = self.tenant_return_prefixes(t).await?;
            self.check_return_url(&prefixes, r)?;
        }
        let token = switchboard_core::random_token(32);
        let now = now_ms();
        let row = ConnectSession {
            id: IdKind::ConnectSession.generate(),
            tenant_id: t.tenant_id.clone(),
            account_id: account.id.clone(),
            connector_id: connector.def.id.clone(),
            token_hash: hash_token(&token),
            return_url: input.return_url.clone(),
            api_key_id: Some(t.key_id.clone()),
            status: PENDING.to_owned(),
            install_id: None,
            expires_at: now + (expires_in as i64) * 1000,
            created_at: now,
            used_at: None,
        };
        let stored = row.clone();
        let limit = self.settings.limits.max_pending_connect_sessions_per_tenant;
        let inserted = self
            .db
            .run(move |conn| {
                connect_sessions::purge_expired(conn, &stored.tenant_id, now - KEEP_EXPIRED_MS)?;
                conn.write_transaction(|conn| {
                    if limit > 0
                        && connect_sessions::count_pending(conn, &stored.tenant_id, now)? >= limit
                    {
                        return Ok(false);
                    }
                    connect_sessions::insert(conn, &stored).map(|()| true)
                })
            })
            .await?;
        if !inserted {
            return Err(ServiceError::QuotaExceeded {
                quota: "pending_connect_sessions",
                limit,
            });
        }
        let target = crate::audit::Target {
            account_id: Some(row.account_id.clone()),
            install_id: None,
            connector_id: Some(row.connector_id.clone()),
        };
        self.audit.admin(
            &t.tenant_id,
            Some(t),
            "connect_session.created",
            201,
            target,
        )?;
        Ok(ConnectSessionCreated {
            url: format!(
                "{}/connect/{token}",
                self.settings.server.public_url.trim_end_matches('/')
            ),
            expires_at: ms_to_rfc3339(row.expires_at),
            id: row.id,
        })
    }

    /// `GET /v1/connect-sessions/{id}`: the session's status and, once used, its install.
    pub async fn get_connect_session(
        &self,
        t: &TenantCtx,
        id: &ConnectSessionId,
    ) -> Result<ConnectSessionOut, ServiceError> {
        let (tenant, sid) = (t.tenant_id.clone(), id.to_string());
        let row = self
            .db
            .run(move |conn| connect_sessions::find(conn, &tenant, &sid))
            .await?
            .ok_or_else(|| ServiceError::NotFound("connect session not found".into()))?;
        let install_status = match &row.install_id {
            Some(install) => {
                let install = install.clone();
                self.db
                    .run(move |conn| switchboard_db::repo::installs::find_by_id(conn, &install))
                    .await?
                    .filter(|i| i.tenant_id == t.tenant_id)
                    .map(|i| i.status.to_string())
            }
            None => None,
        };
        Ok(ConnectSessionOut {
            status: status_of(&row, now_ms()).to_owned(),
            install_status,
            expires_at: ms_to_rfc3339(row.expires_at),
            created_at: ms_to_rfc3339(row.created_at),
            used_at: row.used_at.map(ms_to_rfc3339),
            id: row.id,
            account: row.account_id,
            connector: row.connector_id,
            install_id: row.install_id,
            return_url: row.return_url,
        })
    }

    /// The pending session of a link: unknown is 404 `not_found`, used 410
    /// `connect_link_used`, expired 410 `connect_link_expired`.
    async fn pending_session(&self, token: &str) -> Result<ConnectSession, ServiceError> {
        let unknown = || ServiceError::NotFound("this connect link does not exist".into());
        if !plausible_token(token) {
            return Err(unknown());
        }
        let hash = hash_token(token);
        let row = self
            .db
            .run(move |conn| connect_sessions::find_by_token_hash(conn, &hash))
            .await?
            .ok_or_else(unknown)?;
        match status_of(&row, now_ms()) {
            "used" => Err(ServiceError::ConnectLinkUsed),
            "expired" => Err(ServiceError::ConnectLinkExpired),
            _ => Ok(row),
        }
    }

    /// The page of a pending link (see `InstallService::pending_session` for the refusals).
    pub async fn connect_page(&self, token: &str) -> Result<ConnectPage, ServiceError> {
        let row = self.pending_session(token).await?;
        self.page_of(&row).await
    }

    async fn page_of(&self, row: &ConnectSession) -> Result<ConnectPage, ServiceError> {
        let connector = self.resolver.connector(&row.connector_id)?;
        let def = &connector.def;
        let setup = self
            .resolver
            .setup_values(&row.tenant_id, &row.connector_id)
            .await?;
        let merged = switchboard_connector::merge_settings(def, &setup, &BTreeMap::new());
        let used =
            switchboard_connector::settings_used_by_auth(def, AuthKind::Oauth2AuthorizationCode);
        let missing = switchboard_connector::missing_for_auth(
            def,
            AuthKind::Oauth2AuthorizationCode,
            &merged,
        );
        let fields = def
            .settings
            .iter()
            .filter(|s| s.install_override && !s.secret && used.contains(&s.key))
            .map(|s| ConnectField {
                key: s.key.clone(),
                label: s.label.clone(),
                help: s.help.clone(),
                required: missing.contains(&s.key),
                input: match s.kind {
                    SettingType::Url => "url",
                    SettingType::Integer => "number",
                    _ => "text",
                },
                options: match s.kind {
                    SettingType::Boolean => vec!["true".into(), "false".into()],
                    SettingType::Enum => s.options.clone(),
                    _ => Vec::new(),
                },
            })
            .collect();
        let (reads, writes) = access_labels(def);
        Ok(ConnectPage {
            connector_name: def.name.clone(),
            connector_description: def.description.clone(),
            reads,
            writes,
            fields,
            expires_at_ms: row.expires_at,
        })
    }

    /// The connect form was submitted with `values` (form field -> text; other names ignored).
    /// Validates them as install overrides (the normalisers and rules of install creation),
    /// consumes the link, creates the install for the session's account and returns its
    /// authorize URL. A refused form writes nothing and leaves the link usable.
    pub async fn submit_connect(
        &self,
        token: &str,
        values: &BTreeMap<String, String>,
        request_id: Option<String>,
    ) -> Result<String, ConnectRefusal> {
        let row = self.pending_session(token).await?;
        let page = self.page_of(&row).await?;
        let connector = self.resolver.connector(&row.connector_id)?;
        let mut input = Map::new();
        let mut errors = Vec::new();
        for field in &page.fields {
            match values.get(&field.key).map(|v| v.trim()) {
                Some(v) if !v.is_empty() => {
                    input.insert(field.key.clone(), Value::String(v.to_owned()));
                }
                _ if field.required => errors.push(FieldError::new(&field.key, "is required")),
                _ => {}
            }
        }
        if let Err(ServiceError::InvalidSettings(bad)) =
            settings::validate_input(&connector.def, &input, Layer::Install)
        {
            errors.extend(bad);
        }
        if !errors.is_empty() {
            return Err(ConnectRefusal::Form {
                page: Box::new(page),
                errors,
                message: None,
            });
        }
        // The person who opens the link acts for the tenant's key that created it.
        let ctx = TenantCtx {
            tenant_id: row.tenant_id.clone(),
            key_id: row.api_key_id.clone().unwrap_or_default(),
            request_id,
        };
        let (id, now) = (row.id.clone(), now_ms());
        let claimed = self
            .db
            .run(move |conn| connect_sessions::claim(conn, &id, now))
            .await
            .map_err(ServiceError::from)?;
        if !claimed {
            // Another tab won, or the link expired in between: answer as for a fresh look.
            return Err(self
                .pending_session(token)
                .await
                .err()
                .unwrap_or(ServiceError::ConnectLinkUsed)
                .into());
        }
        let account = AccountId::parse(row.account_id.clone())
            .map_err(|_| ServiceError::internal("stored account id is invalid"))?;
        let created = self
            .create_install(
                &ctx,
                &account,
                InstallIn {
                    connector: row.connector_id.clone(),
                    auth_type: Some(AuthKind::Oauth2AuthorizationCode.as_str().to_owned()),
                    settings: input,
                    return_url: row.return_url.clone(),
                },
            )
            .await;
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                let id = row.id.clone();
                if let Err(release) = self
                    .db
                    .run(move |conn| connect_sessions::release(conn, &id))
                    .await
                {
                    tracing::warn!(session = %row.id, error = %release, "connect: could not release the link after a failed install");
                }
                return Err(match e {
                    ServiceError::InvalidSettings(errors)
                    | ServiceError::UpstreamNotAllowed(errors) => ConnectRefusal::Form {
                        page: Box::new(page),
                        errors,
                        message: None,
                    },
                    ServiceError::DiscoveryFailed(m) | ServiceError::IssuerUnknown(m) => {
                        ConnectRefusal::Form {
                            page: Box::new(page),
                            errors: Vec::new(),
                            message: Some(format!(
                                "The EHR could not be reached with these settings: {m}"
                            )),
                        }
                    }
                    other => ConnectRefusal::Error(other),
                });
            }
        };
        let install_id = created.install.id.clone();
        let (id, iid) = (row.id.clone(), install_id.clone());
        self.db
            .run(move |conn| connect_sessions::set_install(conn, &id, &iid))
            .await
            .map_err(ServiceError::from)?;
        let target = crate::audit::Target {
            account_id: Some(row.account_id.clone()),
            install_id: Some(install_id.clone()),
            connector_id: Some(row.connector_id.clone()),
        };
        if let Err(e) = self.audit.admin(
            &row.tenant_id,
            Some(&ctx),
            "connect_session.used",
            303,
            target,
        ) {
            // The install exists: a full audit buffer cannot undo it; the refusal is logged.
            tracing::warn!(code = %e.code().code(), "connect: audit record refused");
        }
        tracing::info!(session = %row.id, install = %install_id, "connect link used");
        created.authorize_url.ok_or_else(|| {
            ServiceError::internal("authorization-code install without authorize URL").into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{plausible_token, resource_label};

    #[test]
    fn link_tokens_and_labels() {
        assert!(plausible_token(&switchboard_core::random_token(32)));
        assert!(!plausible_token("short"));
        assert!(!plausible_token(&"a/b".repeat(10)));
        assert_eq!(resource_label("CarePlan"), "Care plan");
        assert!(resource_label("Patient").starts_with("Patient"));
    }
}
