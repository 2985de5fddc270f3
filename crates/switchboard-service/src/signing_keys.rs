//! SMART Backend Services keys of connector setups: generated (or uploaded) on setup save,
//! private keys sealed with the key ring (AAD `signing_key:{tenant}:{connector}:{kid}`), the
//! hosted JWK Set (`{public_url}/jwks/{jwks_id}.json`) and the rotation schedule, and the client
//! assertion of a token request. A leaf shared by the setup and install services and the token
//! endpoint, like `resolve`; it uses no service.
//!
//! Rotation is a schedule stored on the rows, not a job: a rotated-in key is published at once
//! and signs from `active_from` = now + overlap; every other key retires (leaves the JWK Set) at
//! now + 2 × overlap. At any time the signing key is the newest key whose `active_from` has
//! passed, so every replica derives the same state from the rows and its clock.

use crate::clock::Clock;
use crate::error::{FieldError, ServiceError};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use switchboard_auth::signing::{self, AssertionKey, KeyError, KeyMaterial, SigningAlg};
use switchboard_auth::TokenClient;
use switchboard_connector::{AuthDef, Connector};
use switchboard_core::ms_to_rfc3339;
use switchboard_crypto::KeyRing;
use switchboard_db::repo::signing_keys as repo;
use switchboard_db::{AnyConnection, Db, DbError, SigningKeyRow};

/// `signing_key` of `PUT /v1/connectors/{c}/setup` (connectors with `oauth2_backend_services`).
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyIn {
    /// `RS384` (default) or `ES384`: the algorithm of the key generated when the setup has none.
    #[serde(default)]
    pub alg: Option<String>,
    /// The tenant's own private key instead of a generated one: PEM (PKCS#8, PKCS#1 or SEC1)
    /// or a private JWK. Replaces the setup's keys at once; only its public part is published.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub private_key: Option<Value>,
}

/// Body of `POST /v1/connectors/{c}/setup/keys/rotate` (optional).
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateIn {
    /// Algorithm of the new key; default: the one the setup signs with now.
    #[serde(default)]
    pub alg: Option<String>,
}

/// One key of a setup as the API shows it (never private material).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SigningKeyOut {
    pub kid: String,
    /// `RS384` or `ES384`.
    pub alg: String,
    /// `active` (signs now), `next` (published, signs from `active_from`) or `retiring`
    /// (published until `retire_at`, no longer signs).
    pub status: &'static str,
    /// `generated` or `uploaded`.
    pub origin: String,
    pub active_from: String,
    pub retire_at: Option<String>,
    pub created_at: String,
}

/// The backend-services part of a setup.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SetupKeysOut {
    /// The hosted JWK Set URL to register with the EHR (public, stable for the setup).
    pub jwks_url: String,
    pub signing_keys: Vec<SigningKeyOut>,
}

pub(crate) const ORIGIN_GENERATED: &str = "generated";
pub(crate) const ORIGIN_UPLOADED: &str = "uploaded";

/// The AAD of a sealed private key.
pub fn key_aad(tenant_id: &str, connector_id: &str, kid: &str) -> String {
    format!("signing_key:{tenant_id}:{connector_id}:{kid}")
}

/// Whether a connector offers backend services (and so has setup keys).
pub fn uses_keys(connector: &Connector) -> bool {
    connector
        .def
        .auth
        .iter()
        .any(|a| matches!(a, AuthDef::Oauth2BackendServices(_)))
}

fn parse_alg(field: &str, alg: Option<&str>) -> Result<Option<SigningAlg>, ServiceError> {
    match alg {
        None => Ok(None),
        Some(a) => SigningAlg::parse(a).map(Some).ok_or_else(|| {
            ServiceError::InvalidSettings(vec![FieldError::new(field, "must be RS384 or ES384")])
        }),
    }
}

fn key_error(field: &str, e: KeyError) -> ServiceError {
    ServiceError::InvalidSettings(vec![FieldError::new(field, e.to_string())])
}

/// What a setup save does to the key set, decided (and any key generated or parsed) before
/// anything is written.
pub(crate) enum KeyPlan {
    /// The connector has no backend services, or the setup keeps its keys.
    Keep,
    /// A new key replaces the whole set at once (first save, or an upload).
    Replace(KeyMaterial, &'static str),
}

/// Where the phase of a key is computed.
fn phase(row: &SigningKeyRow, signing_kid: Option<&str>, now: i64) -> Option<&'static str> {
    if row.retire_at.is_some_and(|r| r <= now) {
        return None;
    }
    if Some(row.kid.as_str()) == signing_kid {
        Some("active")
    } else if row.active_from > now {
        Some("next")
    } else {
        Some("retiring")
    }
}

/// The key that signs at `now`: the newest published key whose `active_from` has passed.
fn signing_row(rows: &[SigningKeyRow], now: i64) -> Option<&SigningKeyRow> {
    rows.iter()
        .filter(|r| r.active_from <= now && r.retire_at.is_none_or(|t| t > now))
        .max_by_key(|r| (r.active_from, r.created_at))
}

/// The setups' key sets.
pub struct SetupKeys {
    pub(crate) db: Db,
    pub(crate) crypto: Arc<KeyRing>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) overlap_ms: i64,
    pub(crate) jwks_max_age_secs: u64,
    /// `server.public_url` without a trailing `/`.
    pub(crate) public_url: String,
}

impl SetupKeys {
    pub fn jwks_url(&self, jwks_id: &str) -> String {
        format!("{}/jwks/{jwks_id}.json", self.public_url)
    }

    pub fn jwks_max_age_secs(&self) -> u64 {
        self.jwks_max_age_secs
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Decides, before the setup is written, what its save does to the keys: 422 for a bad
    /// `signing_key`; a key generated (off the async threads) when the setup has none.
    pub(crate) async fn plan(
        &self,
        tenant_id: &str,
        connector: &Connector,
        input: Option<&SigningKeyIn>,
    ) -> Result<KeyPlan, ServiceError> {
        if !uses_keys(connector) {
            if input.is_some() {
                return Err(ServiceError::InvalidSettings(vec![FieldError::new(
                    "signing_key",
                    "this connector has no oauth2_backend_services auth; it uses no setup key",
                )]));
            }
            return Ok(KeyPlan::Keep);
        }
        let wanted = parse_alg("signing_key.alg", input.and_then(|i| i.alg.as_deref()))?;
        if let Some(private_key) = input.and_then(|i| i.private_key.as_ref()) {
            let material = signing::import(private_key, wanted)
                .map_err(|e| key_error("signing_key.private_key", e))?;
            return Ok(KeyPlan::Replace(material, ORIGIN_UPLOADED));
        }
        let rows = self.rows(tenant_id, &connector.def.id).await?;
        let now = self.now();
        if let Some(current) = signing_row(&rows, now) {
            if let Some(w) = wanted.filter(|w| w.as_str() != current.alg) {
                return Err(ServiceError::InvalidSettings(vec![FieldError::new(
                    "signing_key.alg",
                    format!(
                        "the setup signs with {}; switch to {w} with POST /v1/connectors/{}/setup/keys/rotate {{\"alg\":\"{w}\"}}",
                        current.alg, connector.def.id
                    ),
                )]));
            }
            return Ok(KeyPlan::Keep);
        }
        Ok(KeyPlan::Replace(
            generate(wanted.unwrap_or_default()).await?,
            ORIGIN_GENERATED,
        ))
    }

    /// Applies a plan inside the setup's write transaction. The new key signs from now by the
    /// keys' clock (the one the schedule is read with).
    pub(crate) fn apply(
        &self,
        conn: &mut AnyConnection,
        tenant_id: &str,
        connector_id: &str,
        plan: &KeyPlan,
    ) -> Result<(), DbError> {
        let KeyPlan::Replace(material, origin) = plan else {
            return Ok(());
        };
        let now = self.now();
        let existing = repo::list(conn, tenant_id, connector_id)?;
        let jwks_id = existing
            .first()
            .map(|r| r.jwks_id.clone())
            .unwrap_or_else(new_jwks_id);
        repo::delete_retired(conn, tenant_id, connector_id, None)?;
        repo::insert(
            conn,
            &self.row(
                tenant_id,
                connector_id,
                &jwks_id,
                material,
                origin,
                now,
                now,
            ),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        tenant_id: &str,
        connector_id: &str,
        jwks_id: &str,
        material: &KeyMaterial,
        origin: &str,
        active_from: i64,
        now: i64,
    ) -> SigningKeyRow {
        use secrecy::ExposeSecret as _;
        let kid = hex::encode(rand::random::<[u8; 16]>());
        SigningKeyRow {
            private_key: self.crypto.encrypt_str(
                material.private_pem.expose_secret(),
                key_aad(tenant_id, connector_id, &kid),
            ),
            kid,
            tenant_id: tenant_id.to_owned(),
            connector_id: connector_id.to_owned(),
            jwks_id: jwks_id.to_owned(),
            alg: material.alg.as_str().to_owned(),
            public_jwk: Value::Object(material.public_jwk.clone()).to_string(),
            origin: origin.to_owned(),
            active_from,
            retire_at: None,
            created_at: now,
        }
    }

    async fn rows(
        &self,
        tenant_id: &str,
        connector_id: &str,
    ) -> Result<Vec<SigningKeyRow>, ServiceError> {
        let (t, c) = (tenant_id.to_owned(), connector_id.to_owned());
        Ok(self.db.run(move |conn| repo::list(conn, &t, &c)).await?)
    }

    /// The key set as `GET .../setup` shows it (None when the setup has no keys).
    pub(crate) async fn view(
        &self,
        tenant_id: &str,
        connector_id: &str,
    ) -> Result<Option<SetupKeysOut>, ServiceError> {
        let rows = self.rows(tenant_id, connector_id).await?;
        Ok(self.out(&rows))
    }

    fn out(&self, rows: &[SigningKeyRow]) -> Option<SetupKeysOut> {
        let first = rows.first()?;
        let now = self.now();
        let signing = signing_row(rows, now).map(|r| r.kid.clone());
        let signing_keys = rows
            .iter()
            .filter_map(|r| {
                phase(r, signing.as_deref(), now).map(|status| SigningKeyOut {
                    kid: r.kid.clone(),
                    alg: r.alg.clone(),
                    status,
                    origin: r.origin.clone(),
                    active_from: ms_to_rfc3339(r.active_from),
                    retire_at: r.retire_at.map(ms_to_rfc3339),
                    created_at: ms_to_rfc3339(r.created_at),
                })
            })
            .collect();
        Some(SetupKeysOut {
            jwks_url: self.jwks_url(&first.jwks_id),
            signing_keys,
        })
    }

    /// Publishes a new key now, signing from now + overlap; the others retire at now + 2 ×
    /// overlap. Keys already retired are deleted.
    pub(crate) async fn rotate(
        &self,
        tenant_id: &str,
        connector: &Connector,
        input: &RotateIn,
    ) -> Result<SetupKeysOut, ServiceError> {
        if !uses_keys(connector) {
            return Err(ServiceError::UnsupportedAuthType(format!(
                "connector '{}' has no oauth2_backend_services auth; it has no setup keys",
                connector.def.id
            )));
        }
        let wanted = parse_alg("alg", input.alg.as_deref())?;
        let cid = connector.def.id.clone();
        let rows = self.rows(tenant_id, &cid).await?;
        if rows.is_empty() {
            return Err(ServiceError::NotFound(
                "this connector has no setup (or no key yet): save it with PUT .../setup first"
                    .into(),
            ));
        }
        let now = self.now();
        let alg = wanted
            .or_else(|| signing_row(&rows, now).and_then(|r| SigningAlg::parse(&r.alg)))
            .unwrap_or_default();
        let material = generate(alg).await?;
        let row = self.row(
            tenant_id,
            &cid,
            &rows[0].jwks_id,
            &material,
            ORIGIN_GENERATED,
            now + self.overlap_ms,
            now,
        );
        let retire_at = now + 2 * self.overlap_ms;
        let (t, c) = (tenant_id.to_owned(), cid.clone());
        let rows = self
            .db
            .run(move |conn| {
                conn.write_transaction(|conn| {
                    repo::delete_retired(conn, &t, &c, Some(now))?;
                    repo::insert(conn, &row)?;
                    repo::retire_others(conn, &t, &c, &row.kid, retire_at)?;
                    repo::list(conn, &t, &c)
                })
            })
            .await?;
        self.out(&rows)
            .ok_or_else(|| ServiceError::internal("rotated key set is empty"))
    }

    /// Deletes a setup's keys (with the setup).
    pub(crate) fn delete_all(
        conn: &mut AnyConnection,
        tenant_id: &str,
        connector_id: &str,
    ) -> Result<usize, DbError> {
        repo::delete_retired(conn, tenant_id, connector_id, None)
    }

    /// The public JWK Set of a `jwks_id`: the signing key first, then the next and retiring
    /// ones. None when nothing is published under it.
    pub async fn jwks(&self, jwks_id: &str) -> Result<Option<Value>, ServiceError> {
        let id = jwks_id.to_owned();
        let rows = self.db.run(move |conn| repo::by_jwks_id(conn, &id)).await?;
        let now = self.now();
        let signing = signing_row(&rows, now).map(|r| r.kid.clone());
        let mut keys: Vec<(u8, Value)> = Vec::new();
        for r in &rows {
            let Some(status) = phase(r, signing.as_deref(), now) else {
                continue;
            };
            let (Ok(Value::Object(public)), Some(alg)) = (
                serde_json::from_str::<Value>(&r.public_jwk),
                SigningAlg::parse(&r.alg),
            ) else {
                return Err(ServiceError::internal("stored public key is unreadable"));
            };
            let order = match status {
                "active" => 0,
                "next" => 1,
                _ => 2,
            };
            keys.push((order, signing::published_jwk(&public, &r.kid, alg)));
        }
        if keys.is_empty() {
            return Ok(None);
        }
        keys.sort_by_key(|(o, _)| *o);
        Ok(Some(
            json!({ "keys": keys.into_iter().map(|(_, k)| k).collect::<Vec<_>>() }),
        ))
    }

    /// A fresh client assertion for a token request of a backend-services install.
    pub(crate) async fn assertion(
        &self,
        tenant_id: &str,
        resolved: &crate::resolve::Resolved,
        client: &TokenClient,
    ) -> Result<SecretString, ServiceError> {
        let AuthDef::Oauth2BackendServices(def) = &resolved.auth else {
            return Err(ServiceError::internal(
                "assertion for a non backend-services auth",
            ));
        };
        let connector_id = resolved.connector.def.id.clone();
        let rows = self.rows(tenant_id, &connector_id).await?;
        let now = self.now();
        let row = signing_row(&rows, now).ok_or_else(|| {
            ServiceError::InvalidSettings(vec![FieldError::new(
                "signing_key",
                "this setup has no signing key: save the setup (PUT .../setup) to generate one",
            )])
        })?;
        let alg = SigningAlg::parse(&row.alg)
            .ok_or_else(|| ServiceError::internal("stored key algorithm is unknown"))?;
        let pem = self
            .crypto
            .decrypt_str(
                &row.private_key,
                key_aad(tenant_id, &connector_id, &row.kid),
            )
            .map_err(|_| ServiceError::internal("a setup signing key could not be decrypted"))?;
        let key = AssertionKey::from_pem(alg, &row.kid, &SecretString::from(pem))
            .map_err(|_| ServiceError::internal("a setup signing key could not be loaded"))?;
        let audience = match &def.audience {
            Some(a) => resolved.render(a, None)?,
            None => client.token_url.to_string(),
        };
        let jku = def.jku.then(|| self.jwks_url(&row.jwks_id));
        signing::sign_assertion(
            &key,
            &client.client_id,
            &audience,
            jku.as_deref(),
            now.div_euclid(1000),
        )
        .map_err(ServiceError::internal)
    }
}

/// A key pair generated on the blocking pool (RSA generation takes a while).
async fn generate(alg: SigningAlg) -> Result<KeyMaterial, ServiceError> {
    tokio::task::spawn_blocking(move || signing::generate(alg))
        .await
        .map_err(ServiceError::internal)?
        .map_err(ServiceError::internal)
}

/// 256 random bits in hex: the public, unguessable name of a setup's JWK Set.
fn new_jwks_id() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// A `jwks_id` as the route receives it: 64 lowercase hex characters.
pub fn valid_jwks_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The scrubbed reason of a refused assertion, for the caller of a first token request.
pub(crate) fn first_token_error(e: switchboard_auth::AuthError) -> ServiceError {
    use switchboard_auth::AuthError;
    match &e {
        AuthError::InvalidClient { .. } | AuthError::OAuth { .. } | AuthError::InvalidGrant { .. } => {
            ServiceError::CredentialsRejected(format!(
                "the token endpoint refused the client assertion; check that the client id is registered with this setup's jwks_url (GET .../setup) and the signing algorithm ({e})"
            ))
        }
        _ => crate::tokens::first_token_error(e),
    }
}
