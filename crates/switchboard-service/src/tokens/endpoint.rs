//! Where the [`TokenKeeper`](super::TokenKeeper) gets new tokens: [`OAuthTokenEndpoint`] resolves
//! the install's token client (connector + setup + overrides), sends the refresh grant or the
//! client-credentials request through the one outbound client, and seals the answer. Tests use
//! a fake.

use crate::clock::Clock;
use crate::error::ServiceError;
use crate::resolve::Resolver;
use crate::sealing::{open_tokens, seal_tokens, SealedTokens};
use std::future::Future;
use std::sync::Arc;
use switchboard_auth::AuthError;
use switchboard_connector::AuthDef;
use switchboard_crypto::KeyRing;
use switchboard_db::Install;
use switchboard_outbound::Outbound;

/// Why no new tokens came back.
#[derive(Debug)]
pub enum RequestError {
    /// An authorization-code install without a refresh token: only re-authorization helps.
    NoRefreshToken,
    /// The token endpoint's answer (transient, `invalid_grant`, protocol...).
    Auth(AuthError),
    /// The install itself is unusable (settings, stored ciphertext): passed to the caller.
    Install(ServiceError),
    /// A backend-services client assertion refused with `invalid_client` or `invalid_grant`
    /// (the client's registered keys no longer match): not transient, only re-registering
    /// the keys and re-authorizing helps.
    AssertionRefused(AuthError),
}

impl From<ServiceError> for RequestError {
    fn from(e: ServiceError) -> Self {
        Self::Install(e)
    }
}

/// A token endpoint for installs.
pub trait TokenEndpoint: Send + Sync + 'static {
    /// New tokens for `row` (refresh grant or client credentials), sealed for storage.
    fn request(
        &self,
        row: &Install,
    ) -> impl Future<Output = Result<SealedTokens, RequestError>> + Send;
}

/// The installs' real token endpoints.
pub struct OAuthTokenEndpoint {
    pub(crate) resolver: Arc<Resolver>,
    pub(crate) crypto: Arc<KeyRing>,
    pub(crate) outbound: Outbound,
    pub(crate) redirect_uri: String,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) limits: Arc<crate::limits::OutboundLimits>,
    pub(crate) keys: Arc<crate::signing_keys::SetupKeys>,
}

impl TokenEndpoint for OAuthTokenEndpoint {
    async fn request(&self, row: &Install) -> Result<SealedTokens, RequestError> {
        let resolved = self.resolver.resolve_row(row).await?;
        let client = resolved.token_client(&self.redirect_uri)?.ok_or_else(|| {
            ServiceError::internal("refresh requested for a static bearer install")
        })?;
        let http = self.outbound.client_for(&client.token_url).map_err(|e| {
            ServiceError::UpstreamNotAllowed(vec![crate::error::FieldError::new(
                "token_url",
                e.to_string(),
            )])
        })?;
        self.limits
            .acquire(
                &resolved.connector,
                crate::limits::Outgoing::Token,
                &row.tenant_id,
            )
            .await?;
        let stored = open_tokens(&self.crypto, row)?;
        let result = match &resolved.auth {
            AuthDef::Oauth2AuthorizationCode(_) => match &stored.refresh {
                Some(rt) => client.refresh(http, rt).await,
                None => return Err(RequestError::NoRefreshToken),
            },
            AuthDef::Oauth2ClientCredentials(c) => {
                let scopes = resolved.render(&c.scopes, None)?;
                client.client_credentials(http, &scopes).await
            }
            AuthDef::Oauth2BackendServices(b) => {
                let scopes = resolved.render(&b.scopes, None)?;
                let assertion = self
                    .keys
                    .assertion(&row.tenant_id, &resolved, &client)
                    .await?;
                match client
                    .client_credentials_with_assertion(http, &scopes, &assertion)
                    .await
                {
                    Err(e @ (AuthError::InvalidClient { .. } | AuthError::InvalidGrant { .. })) => {
                        return Err(RequestError::AssertionRefused(e))
                    }
                    other => other,
                }
            }
            AuthDef::StaticBearer(_) => {
                return Err(ServiceError::internal("static bearer tokens are not refreshed").into())
            }
        };
        if let (Err(e), Some(_)) = (&result, &resolved.discovered) {
            // An endpoint error (gone, moved, unreachable) on a discovered token endpoint: the
            // next use reads discovery again.
            if endpoint_error(e) {
                self.resolver
                    .discovery_stale(&row.tenant_id, &row.connector_id)
                    .await;
            }
        }
        let tokens = result.map_err(RequestError::Auth)?;
        let now = self.clock.now_ms();
        let mut sealed = seal_tokens(&self.crypto, &row.id, &tokens, now);
        sealed.refresh_expires_at =
            refresh_lapse_at(&resolved.auth, sealed.refresh_expires_at, now);
        Ok(sealed)
    }
}

/// When a refresh token used or issued at `now` lapses if it is not used again: the sooner of
/// the server's `declared` lifetime and the connector's `refresh_token_idle_secs` (None: no
/// known limit; the polite refresher's daily check keeps it alive).
pub(crate) fn refresh_lapse_at(auth: &AuthDef, declared: Option<i64>, now: i64) -> Option<i64> {
    let idle = match auth {
        AuthDef::Oauth2AuthorizationCode(c) => c
            .refresh_token_idle_secs
            .map(|s| now.saturating_add((s.min(10 * 365 * 86_400) as i64) * 1000)),
        _ => None,
    };
    match (declared, idle) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A token-endpoint failure that says the endpoint itself is wrong (404, 405, 410, or no
/// answer at all), not the grant or the client.
fn endpoint_error(e: &AuthError) -> bool {
    match e {
        AuthError::OAuth { status, .. } => matches!(status, 404 | 405 | 410),
        AuthError::Transient { status, .. } => status.is_none(),
        AuthError::InvalidUrl(_) => true,
        _ => false,
    }
}
