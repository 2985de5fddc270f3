//! switchboard-auth: the OAuth 2.0 / SMART App Launch protocol client. PKCE and `state`
//! (RFC 7636), the authorization URL, the RFC 9207 issuer check, token-endpoint calls (code
//! exchange, refresh, client credentials) with client authentication (RFC 6749 §2.3.1), token
//! response parsing with SMART launch context, RFC 7009 revocation, SMART discovery
//! (`.well-known/smart-configuration`), granted-scope checks (SMART v1, v2, Epic names), and
//! SMART Backend Services keys and client assertions (`signing`: RS384/ES384 `private_key_jwt`). Pure protocol: no
//! database, no server, no retries; the service layer stores results and orchestrates.
//!
//! The caller's decision hangs on [`AuthError::is_invalid_grant`] (the grant is dead:
//! re-authorise) versus [`AuthError::is_transient`] (retry later, never demote an install).
//!
//! Hand-written on reqwest, not on the `oauth2` crate (v5): its token-response handling drops
//! the HTTP status of every non-200 answer (a JSON error becomes `ServerResponse` without a
//! status, anything else `Parse(err, raw_body)`), so a load balancer's 503 page and a 400 page
//! are the same error and 429 looks like a permanent refusal; its `Parse` variant carries the raw
//! body (tokens included) into `Debug`; `expires_in: "3600"` fails the whole response (after a
//! code exchange that loses the one-time code); a JSON body served as `text/plain` is rejected.

mod authorize;
pub mod discovery;
mod error;
mod id_token;
mod pkce;
mod response;
pub mod scopes;
pub mod signing;
mod token;

pub use authorize::{authorize_url, check_issuer, check_issuer_required, AuthorizeRequest};
pub use discovery::{DiscoveryError, SmartConfiguration};
pub use error::{AuthError, MAX_DESCRIPTION_CHARS};
pub use pkce::{hash_state, new_pkce, new_state, pkce_challenge, Pkce, CODE_CHALLENGE_METHOD};
pub use response::{SmartContext, TokenResponse};
pub use switchboard_connector::model::ClientAuth;
pub use token::{TokenClient, TokenTypeHint, MAX_RESPONSE_BYTES};
