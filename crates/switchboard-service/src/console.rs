//! Web console sessions (issue 15). `POST /console/session` exchanges a tenant API key (checked
//! by the API layer through [`crate::keys::KeyService::authenticate`]) for an opaque session
//! token the browser keeps in an HttpOnly cookie; only its SHA-256 is stored. The session is a
//! second way to authenticate the same `/v1` API: [`ConsoleService::authenticate`] gives the
//! same [`TenantCtx`] as the key it was opened with, for as long as that key is not revoked, the
//! session was used within `console.session_idle_secs` and `console.session_max_secs` have not
//! passed since sign-in. Writes authenticated by the cookie must carry the session's CSRF token
//! (derived from the session token, so nothing else is stored) and come from the public origin
//! ([`ConsoleService::check_write`]). Depends on `clock`, `tenant` and `error` only.

use crate::clock::Clock;
use crate::error::ServiceError;
use crate::tenant::TenantCtx;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use switchboard_core::random_token;
use switchboard_db::repo::console_sessions::{self, ConsoleSession};
use switchboard_db::Db;

/// The session cookie (HttpOnly).
pub const SESSION_COOKIE: &str = "sb_console";
/// The CSRF cookie (readable by the console's script, which echoes it in [`CSRF_HEADER`]).
pub const CSRF_COOKIE: &str = "sb_console_csrf";
/// The header a cookie-authenticated write must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Activity is written back at most this often (a busy console does not write per request).
const TOUCH_EVERY_MS: i64 = 60_000;

/// Why a cookie-authenticated write was refused (403 `csrf_rejected`). The messages name what
/// to send, never a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    #[error("a write authenticated by the console cookie needs the X-CSRF-Token header")]
    MissingToken,
    #[error("the X-CSRF-Token header does not match the console session")]
    WrongToken,
    #[error("a write authenticated by the console cookie must come from {expected}")]
    CrossOrigin { expected: String },
}

/// A new session: the cookie values (shown to the browser once) and when it ends at the latest.
#[derive(Debug)]
pub struct NewSession {
    pub token: String,
    pub csrf_token: String,
    pub expires_at_ms: i64,
}

/// A live session as `GET /console/session` shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SessionOut {
    /// The tenant the session acts for.
    pub tenant: String,
    /// The API key it was opened with (its id, never the key).
    pub api_key_id: String,
    /// The value to send as `X-CSRF-Token` with every write (also in the `sb_console_csrf`
    /// cookie).
    pub csrf_token: String,
    /// RFC 3339: the session ends then at the latest (earlier after
    /// `console.session_idle_secs` without a request).
    pub expires_at: String,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The CSRF token of a session: a hash of its (secret) token, so a page that cannot read the
/// HttpOnly cookie cannot compute it.
pub fn csrf_token_of(session_token: &str) -> String {
    sha256_hex(&format!("switchboard-console-csrf:{session_token}"))
}

/// Equality in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The console's sessions.
pub struct ConsoleService {
    pub(crate) db: Db,
    /// Sign-in and sign-out are recorded in the audit trail (`console_session.created`,
    /// `console_session.ended`), like the other credentials a tenant hands out.
    pub(crate) audit: Arc<crate::audit::AuditLog>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) idle_ms: i64,
    pub(crate) max_ms: i64,
    /// The origin of `server.public_url` (`scheme://host[:port]`): the only origin a
    /// cookie-authenticated write may come from.
    pub(crate) origin: String,
}

impl ConsoleService {
    /// The public origin writes must come from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether the cookies must be `Secure` (the public URL is https).
    pub fn secure_cookies(&self) -> bool {
        self.origin.starts_with("https://")
    }

    /// The absolute lifetime, for the cookie's `Max-Age`.
    pub fn max_age_secs(&self) -> i64 {
        self.max_ms / 1000
    }

    /// Opens a session for the tenant and key of `t` (already authenticated by its API key).
    /// Expired sessions of every tenant are purged first.
    pub async fn sign_in(&self, t: &TenantCtx) -> Result<NewSession, ServiceError> {
        let now = self.clock.now_ms();
        let token = format!("sbc_{}", random_token(32));
        let row = ConsoleSession {
            token_hash: sha256_hex(&token),
            tenant_id: t.tenant_id.clone(),
            api_key_id: t.key_id.clone(),
            created_at: now,
            last_seen_at: now,
            expires_at: now.saturating_add(self.max_ms),
        };
        let idle_before = now.saturating_sub(self.idle_ms);
        let expires_at_ms = row.expires_at;
        self.db
            .run(move |conn| {
                console_sessions::purge(conn, now, idle_before)?;
                console_sessions::insert(conn, &row)
            })
            .await?;
        self.audit.admin(
            &t.tenant_id,
            Some(t),
            "console_session.created",
            201,
            crate::audit::Target::default(),
        )?;
        Ok(NewSession {
            csrf_token: csrf_token_of(&token),
            token,
            expires_at_ms,
        })
    }

    /// The session of a cookie value, if it is live; `None` for anything else (unknown, expired,
    /// idle too long, signed out, its API key revoked).
    pub async fn find(&self, token: &str) -> Result<Option<SessionOut>, ServiceError> {
        Ok(self.live(token).await?.map(|row| SessionOut {
            tenant: row.tenant_id,
            api_key_id: row.api_key_id,
            csrf_token: csrf_token_of(token),
            expires_at: switchboard_core::ms_to_rfc3339(row.expires_at),
        }))
    }

    /// The tenant a live session acts for (the same context as its API key).
    pub async fn authenticate(&self, token: &str) -> Result<Option<TenantCtx>, ServiceError> {
        Ok(self.live(token).await?.map(|row| TenantCtx {
            tenant_id: row.tenant_id,
            key_id: row.api_key_id,
            request_id: None,
        }))
    }

    async fn live(&self, token: &str) -> Result<Option<ConsoleSession>, ServiceError> {
        if !token.starts_with("sbc_") || token.len() > 100 {
            return Ok(None);
        }
        let hash = sha256_hex(token);
        let now = self.clock.now_ms();
        let (idle_ms, max_ms) = (self.idle_ms, self.max_ms);
        self.db
            .run(move |conn| {
                let Some(row) = console_sessions::find_with_active_key(conn, &hash)? else {
                    return Ok(None);
                };
                let ended = now >= row.expires_at
                    || now >= row.created_at.saturating_add(max_ms)
                    || now.saturating_sub(row.last_seen_at) >= idle_ms;
                if ended {
                    console_sessions::delete(conn, &hash)?;
                    return Ok(None);
                }
                if now - row.last_seen_at >= TOUCH_EVERY_MS {
                    console_sessions::touch(conn, &hash, now)?;
                }
                Ok(Some(row))
            })
            .await
            .map_err(Into::into)
    }

    /// Ends a live session (recorded in the audit trail for its tenant and key, with the
    /// request id of the sign-out); `false` when there was none.
    pub async fn sign_out(
        &self,
        token: &str,
        request_id: Option<String>,
    ) -> Result<bool, ServiceError> {
        let Some(ctx) = self.authenticate(token).await? else {
            return Ok(false);
        };
        let hash = sha256_hex(token);
        let ended = self
            .db
            .run(move |conn| console_sessions::delete(conn, &hash))
            .await?;
        if ended {
            let ctx = ctx.with_request_id(request_id);
            self.audit.admin(
                &ctx.tenant_id,
                Some(&ctx),
                "console_session.ended",
                204,
                crate::audit::Target::default(),
            )?;
        }
        Ok(ended)
    }

    /// The CSRF rule of a write authenticated by the session cookie `token`: the
    /// `X-CSRF-Token` header equals the session's token, and the request comes from the public
    /// origin (its `Origin` header, else the origin of its `Referer`; neither is refused).
    pub fn check_write(
        &self,
        token: &str,
        csrf_header: Option<&str>,
        origin: Option<&str>,
        referer: Option<&str>,
    ) -> Result<(), CsrfError> {
        self.check_origin(origin, referer)?;
        let sent = csrf_header.ok_or(CsrfError::MissingToken)?;
        if same(sent.trim(), &csrf_token_of(token)) {
            Ok(())
        } else {
            Err(CsrfError::WrongToken)
        }
    }

    /// The origin part of the rule alone (sign-in uses it: no cross-site login).
    pub fn check_origin(
        &self,
        origin: Option<&str>,
        referer: Option<&str>,
    ) -> Result<(), CsrfError> {
        let cross = || CsrfError::CrossOrigin {
            expected: self.origin.clone(),
        };
        let from = match (origin, referer) {
            (Some(o), _) if o != "null" => o.trim_end_matches('/').to_owned(),
            (None, Some(r)) => url::Url::parse(r)
                .map(|u| u.origin().ascii_serialization())
                .map_err(|_| cross())?,
            _ => return Err(cross()),
        };
        if from.eq_ignore_ascii_case(&self.origin) {
            Ok(())
        } else {
            Err(cross())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_token_is_bound_to_the_session_and_compared_whole() {
        let a = csrf_token_of("sbc_a");
        assert_ne!(a, csrf_token_of("sbc_b"));
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &a[..a.len() - 1]));
        assert!(!same("abc", "abd"));
    }
}
