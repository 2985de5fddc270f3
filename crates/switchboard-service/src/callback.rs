//! The shared `/connector/callback`: one URL for every tenant, connector and install. The state
//! alone finds the install (hashed lookup, single use, expiring); the code is redeemed only at
//! the token endpoint recorded with that state, with the PKCE verifier stored with it.

use crate::cache::InstallCache;
use crate::resolve::Resolver;
use crate::webhooks::{EventType, InstallRef};
use secrecy::SecretString;
use serde::Deserialize;
use std::sync::Arc;
use switchboard_core::{now_ms, ErrorCode, InstallStatus};
use switchboard_crypto::KeyRing;
use switchboard_db::repo::{installs, oauth_states, webhooks};
use switchboard_db::Db;
use switchboard_db::TokenWrite;
use switchboard_outbound::Outbound;
use url::Url;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackIn {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub iss: Option<String>,
}

/// What the person who just signed in to their EHR is shown when there is no return_url.
#[derive(Debug, Clone)]
pub struct ResultPage {
    /// Why the connection was not made (`None`: it was). The page's HTTP status is this code's,
    /// from the one error table.
    pub code: Option<ErrorCode>,
    pub title: String,
    pub message: String,
    pub install_id: Option<String>,
    pub status: Option<String>,
}

impl ResultPage {
    pub fn http_status(&self) -> u16 {
        self.code.map_or(200, ErrorCode::status)
    }
}

/// Why a callback did not authorize its install: the code of the error table, and the `error`
/// a return URL receives (the provider's own OAuth error code when it refused, else ours).
struct Failure<'a> {
    code: ErrorCode,
    redirect_error: &'a str,
}

impl Failure<'static> {
    fn ours(code: ErrorCode) -> Self {
        Failure {
            code,
            redirect_error: code.code(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum CallbackOutcome {
    Redirect(String),
    Page(ResultPage),
}

/// Error codes may be echoed to return URLs: keep only a short `[a-z0-9_]` token.
fn safe_code(s: &str) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    if t.is_empty() {
        ErrorCode::AuthorizationDenied.code().into()
    } else {
        t.to_ascii_lowercase()
    }
}

fn invalid_state_page() -> CallbackOutcome {
    CallbackOutcome::Page(ResultPage {
        code: Some(ErrorCode::InvalidState),
        title: "This sign-in link is no longer valid".into(),
        message: "The authorization request is unknown, has expired or was already used. Nothing was changed. Go back to the application that sent you here and start the connection again.".into(),
        install_id: None,
        status: None,
    })
}

/// The OAuth redirect endpoint shared by every install.
pub struct CallbackService {
    pub(crate) db: Db,
    pub(crate) crypto: Arc<KeyRing>,
    pub(crate) outbound: Outbound,
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) cache: Arc<InstallCache>,
    pub(crate) audit: Arc<crate::audit::AuditLog>,
    pub(crate) limits: Arc<crate::limits::OutboundLimits>,
    pub(crate) outbox: Arc<crate::webhooks::Outbox>,
}

impl CallbackService {
    /// `request_id`: the request's id (the API layer's), for the audit record.
    pub async fn handle_callback(
        &self,
        q: CallbackIn,
        request_id: Option<String>,
    ) -> CallbackOutcome {
        let Some(state) = q
            .state
            .as_deref()
            .filter(|s| !s.is_empty() && s.len() <= 256)
        else {
            return invalid_state_page();
        };
        let hash = switchboard_auth::hash_state(state);
        let now = now_ms();
        let taken = self
            .db
            .run(move |conn| {
                let Some(st) = oauth_states::take(conn, &hash, now)? else {
                    return Ok(None);
                };
                let install = installs::find_by_id(conn, &st.install_id)?;
                Ok(install.map(|i| (st, i)))
            })
            .await;
        let (st, install) = match taken {
            Ok(Some(pair)) => pair,
            Ok(None) => return invalid_state_page(),
            Err(e) => {
                tracing::error!(error = %e, "callback: database error");
                return CallbackOutcome::Page(ResultPage {
                    code: Some(ErrorCode::ServiceUnavailable),
                    title: "Switchboard could not complete the connection".into(),
                    message:
                        "A temporary error occurred. Please start the connection again in a minute."
                            .into(),
                    install_id: None,
                    status: None,
                });
            }
        };
        let finish = |status: &str, error: Option<Failure>, message: &str| {
            self.finish(
                &install.id,
                st.return_url.as_deref(),
                status,
                error,
                message,
            )
        };
        let current = install.status.to_string();

        if let Some(err) = q.error.as_deref() {
            let code = safe_code(err);
            let msg = format!("authorization was not granted by the EHR ({code})");
            self.record_error(&install.id, &msg).await;
            let denied = Failure {
                code: ErrorCode::AuthorizationDenied,
                redirect_error: &code,
            };
            return finish(&current, Some(denied), "The EHR did not grant access, so the connection was not made. You can close this page and try again.");
        }
        // RFC 9207 §2.4: a server that advertises `iss` (per the cached discovery document)
        // must send it; a missing one is then refused like a wrong one.
        let iss_required = q.iss.is_none()
            && self
                .resolver
                .resolve_row(&install)
                .await
                .ok()
                .and_then(|r| r.discovered)
                .is_some_and(|d| d.authorization_response_iss_parameter_supported);
        if let Err(e) = switchboard_auth::check_issuer_required(
            st.expected_issuer.as_deref(),
            q.iss.as_deref(),
            iss_required,
        ) {
            tracing::warn!(install = %install.id, error = %e, "callback: issuer mismatch; code not redeemed");
            self.record_error(&install.id, "authorization response came from an unexpected issuer (RFC 9207 iss mismatch); code not redeemed").await;
            return finish(&current, Some(Failure::ours(ErrorCode::IssuerMismatch)), "The sign-in response came from an unexpected server, so it was rejected. Start the connection again.");
        }
        let Some(code) = q.code.filter(|c| !c.is_empty() && c.len() <= 8192) else {
            self.record_error(&install.id, "callback carried neither a code nor an error")
                .await;
            return finish(
                &current,
                Some(Failure::ours(ErrorCode::InvalidRequest)),
                "The EHR's answer was incomplete. Start the connection again.",
            );
        };

        match self.redeem(&install, &st, &code).await {
            Ok(()) => {
                let target = crate::audit::Target {
                    account_id: Some(install.account_id.clone()),
                    install_id: Some(install.id.clone()),
                    connector_id: Some(install.connector_id.clone()),
                };
                // The tokens are committed: a full audit buffer cannot undo that, so a refusal
                // (fail-closed) is only logged here.
                // The browser calls this, with no API key: the record names the key that started
                // the authorization (kept with the state) and this request.
                let by = crate::audit::By {
                    api_key_id: st.api_key_id.clone(),
                    request_id,
                };
                if let Err(e) =
                    self.audit
                        .admin_by(&install.tenant_id, by, "install.authorized", 302, target)
                {
                    tracing::warn!(code = %e.code().code(), "callback: audit record refused");
                }
                finish(
                    InstallStatus::Authorized.as_str(),
                    None,
                    "The EHR is connected. You can close this page and return to the application.",
                )
            }
            Err(msg) => {
                // `msg` is built from scrubbed AuthError text: no code, verifier or token.
                tracing::warn!(install = %install.id, error = %msg, "callback: token exchange failed");
                self.record_error(&install.id, &msg).await;
                finish(&current, Some(Failure::ours(ErrorCode::TokenExchangeFailed)), "The EHR accepted the sign-in but the token exchange failed. Start the connection again; if it keeps failing, contact the application's support.")
            }
        }
    }

    /// Exchanges the code at the state's token endpoint and commits the tokens.
    async fn redeem(
        &self,
        install: &switchboard_db::Install,
        st: &switchboard_db::OAuthState,
        code: &str,
    ) -> Result<(), String> {
        let resolved = self
            .resolver
            .resolve_row(install)
            .await
            .map_err(|e| format!("install settings are incomplete: {e}"))?;
        let mut client = resolved
            .token_client(&st.redirect_uri)
            .map_err(|e| e.to_string())?
            .ok_or("install does not use OAuth")?;
        client.token_url =
            Url::parse(&st.token_url).map_err(|_| "stored token URL is invalid".to_owned())?;
        let verifier = self
            .crypto
            .decrypt(
                &st.verifier,
                format!("state:{}:verifier", st.state_hash).as_bytes(),
            )
            .map_err(|e| e.to_string())?;
        let verifier = SecretString::from(
            String::from_utf8(verifier).map_err(|_| "stored verifier is corrupt".to_owned())?,
        );
        // The recorded token URL is checked again now: the policy may be stricter than when
        // the authorization started.
        let http = self
            .outbound
            .client_for(&client.token_url)
            .map_err(|e| format!("token URL refused: {e}"))?;
        self.limits
            .acquire(
                &resolved.connector,
                crate::limits::Outgoing::Token,
                &install.tenant_id,
            )
            .await
            .map_err(|e| e.to_string())?;
        let tokens = client
            .exchange_code(http, code, &st.redirect_uri, &verifier)
            .await
            .map_err(|e| format!("token exchange failed: {e}"))?;
        let mut sealed = crate::sealing::seal_tokens(&self.crypto, &install.id, &tokens, now_ms());
        if sealed.scopes.is_none() {
            // RFC 6749 §5.1: an omitted scope means exactly the requested scope was granted.
            sealed.scopes = resolved.requested_scopes().ok().filter(|s| !s.is_empty());
        }
        let now = now_ms();
        let lapse = crate::tokens::refresh_lapse_at(&resolved.auth, sealed.refresh_expires_at, now);
        // A concurrent refresh may bump the version; retry the fenced write on the latest one.
        let mut version = install.token_version;
        for _ in 0..5 {
            let write = TokenWrite {
                access_token: sealed.access.clone(),
                refresh_token: sealed.refresh.clone(),
                expires_at: sealed.expires_at,
                scopes: sealed.scopes.clone(),
                context: sealed.context.clone(),
                status: InstallStatus::Authorized,
                last_error: None,
                last_refresh_at: Some(now),
                last_refresh_error: None,
                now,
            };
            let id = install.id.clone();
            let has_refresh = sealed.refresh.is_some();
            let event = self.outbox.install_event(
                EventType::InstallAuthorized,
                InstallRef {
                    status: InstallStatus::Authorized.as_str(),
                    ..InstallRef::from(install)
                },
            );
            let committed = self
                .db
                .run(move |conn| {
                    // The tokens and `install.authorized` commit together or not at all.
                    conn.write_transaction(|conn| {
                        if !has_refresh {
                            // A new grant without a refresh token must not keep the old
                            // grant's one.
                            installs::clear_refresh_token(conn, &id, version)?;
                        }
                        let committed = installs::store_tokens(conn, &id, version, &write)?;
                        if committed && has_refresh {
                            installs::set_refresh_expires_at(conn, &id, version + 1, lapse)?;
                        }
                        if committed {
                            webhooks::emit(conn, &event)?;
                        }
                        Ok::<_, switchboard_db::DbError>(committed)
                    })
                })
                .await
                .map_err(|e| e.to_string())?;
            if committed {
                self.outbox.committed();
                self.cache.remove(&install.id);
                tracing::info!(install = %install.id, "install authorized");
                return Ok(());
            }
            let id = install.id.clone();
            version = self
                .db
                .run(move |conn| installs::find_by_id(conn, &id))
                .await
                .map_err(|e| e.to_string())?
                .map(|r| r.token_version)
                .ok_or("install was deleted meanwhile")?;
        }
        Err("could not store the tokens (concurrent updates)".into())
    }

    async fn record_error(&self, install_id: &str, message: &str) {
        let (id, msg, now) = (install_id.to_owned(), message.to_owned(), now_ms());
        if let Err(e) = self
            .db
            .run(move |conn| installs::set_last_error(conn, &id, &msg, now))
            .await
        {
            tracing::error!(error = %e, "callback: could not record the install's last_error");
        }
        self.cache.remove(install_id);
    }

    fn finish(
        &self,
        install_id: &str,
        return_url: Option<&str>,
        status: &str,
        failure: Option<Failure>,
        message: &str,
    ) -> CallbackOutcome {
        if let Some(Ok(mut url)) = return_url.map(Url::parse) {
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("install", install_id);
                q.append_pair("status", status);
                if let Some(f) = &failure {
                    q.append_pair("error", f.redirect_error);
                }
            }
            return CallbackOutcome::Redirect(url.to_string());
        }
        CallbackOutcome::Page(ResultPage {
            code: failure.as_ref().map(|f| f.code),
            title: if failure.is_some() {
                "The connection was not completed".into()
            } else {
                "Connected".into()
            },
            message: message.to_owned(),
            install_id: Some(install_id.to_owned()),
            status: Some(status.to_owned()),
        })
    }
}
