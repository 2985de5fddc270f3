//! Cursor pagination of the tenant lists: the query parameters a list takes (`limit`, `cursor`,
//! and the filters of the cross-account installs list) and the opaque cursors it hands out.
//!
//! A cursor is the sort key of the last row served (`switchboard_db::repo::page::After`),
//! sealed with the key ring under AAD `cursor:{tenant}:{list}`, base64url. The list names its
//! filters, so a cursor only opens for the tenant, list and filters it was made for: a
//! tampered, truncated or foreign cursor is a 400 `invalid_request`, never a different page.

use crate::ServiceError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use switchboard_core::{valid_external_id, InstallStatus};
use switchboard_crypto::KeyRing;
use switchboard_db::repo::page::After;

/// Rows per page when the request names no `limit`.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest `limit` a request may ask for.
pub const MAX_LIMIT: u32 = 500;
/// Cursors we hand out are about 120 characters; anything much longer is not one of ours.
const MAX_CURSOR_LEN: usize = 512;

/// Query of a plain list (`GET /v1/accounts`, `/v1/api-keys`, `/v1/accounts/{a}/installs`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageIn {
    /// At most this many items, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page; absent for the first page.
    pub cursor: Option<String>,
}

/// Query of `GET /v1/installs`: the tenant's installs across its accounts.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InstallsQuery {
    /// Only installs in this status.
    #[param(value_type = Option<String>, pattern = "^(pending_authorization|authorized|needs_reauthorization|error)$")]
    pub status: Option<InstallStatus>,
    /// Only installs of this connector id.
    #[param(pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")]
    pub connector: Option<String>,
    /// Only installs of this account id.
    #[param(pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")]
    pub account: Option<String>,
    /// At most this many items, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl InstallsQuery {
    pub fn page(&self) -> PageIn {
        PageIn {
            limit: self.limit,
            cursor: self.cursor.clone(),
        }
    }
}

/// Query of `GET /v1/audit`: the tenant's audit trail, oldest first.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only records of this install id.
    pub install: Option<String>,
    /// Only records of this account id.
    #[param(pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")]
    pub account: Option<String>,
    /// Only records of this method id (or administrative action, e.g. `install.created`).
    pub method: Option<String>,
    /// `ok` (status below 400), `error`, or one HTTP status.
    #[param(pattern = "^(ok|error|[1-5][0-9][0-9])$")]
    pub outcome: Option<String>,
    /// Records at or after this time: RFC 3339 or epoch milliseconds.
    pub from: Option<String>,
    /// Records before this time: RFC 3339 or epoch milliseconds.
    pub to: Option<String>,
    /// A patient id: only the calls about that patient (hashed server-side, never stored).
    pub patient: Option<String>,
    /// At most this many items, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl AuditQuery {
    pub fn page(&self) -> PageIn {
        PageIn {
            limit: self.limit,
            cursor: self.cursor.clone(),
        }
    }
}

/// Where a page starts: the validated limit and the key to read after (None: from the start).
pub(crate) struct Start {
    pub limit: i64,
    pub after: Option<After>,
}

/// Validates `limit` and opens `cursor` for the list `scope` of `tenant_id`.
pub(crate) fn start(
    ring: &KeyRing,
    tenant_id: &str,
    scope: &str,
    page: &PageIn,
) -> Result<Start, ServiceError> {
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ServiceError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let after = match &page.cursor {
        Some(c) => Some(open(ring, tenant_id, scope, c).ok_or_else(|| {
            ServiceError::InvalidRequest(
                "cursor is not a next_cursor of this list; start again without one".into(),
            )
        })?),
        None => None,
    };
    Ok(Start {
        limit: i64::from(limit),
        after,
    })
}

/// The `next_cursor` for a page that ended at `after`.
pub(crate) fn seal(ring: &KeyRing, tenant_id: &str, scope: &str, after: &After) -> String {
    let plain = format!("{}:{}", after.created_at, after.id);
    URL_SAFE_NO_PAD.encode(ring.encrypt(plain.as_bytes(), aad(tenant_id, scope)))
}

fn open(ring: &KeyRing, tenant_id: &str, scope: &str, cursor: &str) -> Option<After> {
    if cursor.len() > MAX_CURSOR_LEN {
        return None;
    }
    let blob = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let plain = ring.decrypt(&blob, aad(tenant_id, scope)).ok()?;
    let plain = String::from_utf8(plain).ok()?;
    let (created_at, id) = plain.split_once(':')?;
    Some(After {
        created_at: created_at.parse().ok()?,
        id: id.to_owned(),
    })
}

fn aad(tenant_id: &str, scope: &str) -> String {
    format!("cursor:{tenant_id}:{scope}")
}

/// The list scope of installs matching these filters. Filter values are ids (no `:`), so the
/// scope names one filter combination exactly.
pub(crate) fn installs_scope(
    account: Option<&str>,
    status: Option<InstallStatus>,
    connector: Option<&str>,
) -> String {
    format!(
        "installs:{}:{}:{}",
        account.unwrap_or(""),
        status.map(InstallStatus::as_str).unwrap_or(""),
        connector.unwrap_or("")
    )
}

/// An id-valued filter: absent, or a valid id (otherwise 400 naming the parameter).
pub(crate) fn id_filter(name: &str, value: Option<&String>) -> Result<(), ServiceError> {
    match value {
        Some(v) if !valid_external_id(v) => Err(ServiceError::InvalidRequest(format!(
            "{name} must be an id: 1 to 64 characters of A-Z a-z 0-9 _ . -"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(limit: Option<u32>, cursor: Option<&str>) -> PageIn {
        PageIn {
            limit,
            cursor: cursor.map(str::to_owned),
        }
    }

    #[test]
    fn limit_defaults_to_100_and_must_be_1_to_500() {
        let ring = KeyRing::generate();
        assert_eq!(
            start(&ring, "t", "accounts", &page(None, None))
                .unwrap()
                .limit,
            100
        );
        assert_eq!(
            start(&ring, "t", "accounts", &page(Some(1), None))
                .unwrap()
                .limit,
            1
        );
        assert_eq!(
            start(&ring, "t", "accounts", &page(Some(500), None))
                .unwrap()
                .limit,
            500
        );
        for bad in [0, 501, u32::MAX] {
            assert!(matches!(
                start(&ring, "t", "accounts", &page(Some(bad), None)),
                Err(ServiceError::InvalidRequest(_))
            ));
        }
    }

    #[test]
    fn a_cursor_opens_only_for_its_tenant_list_and_filters() {
        let ring = KeyRing::generate();
        let after = After {
            created_at: 1_700_000_000_123,
            id: "acc_x.y-z".into(),
        };
        let c = seal(&ring, "ten_a", "accounts", &after);
        assert!(c.len() < MAX_CURSOR_LEN, "{}", c.len());
        let opened = start(&ring, "ten_a", "accounts", &page(Some(10), Some(&c))).unwrap();
        assert_eq!(opened.after, Some(after.clone()));

        let scoped = installs_scope(Some("acme"), Some(InstallStatus::Authorized), None);
        let ci = seal(&ring, "ten_a", &scoped, &after);
        let foreign = [
            start(&ring, "ten_b", "accounts", &page(None, Some(&c))),
            start(&ring, "ten_a", "api_keys", &page(None, Some(&c))),
            start(
                &ring,
                "ten_a",
                &installs_scope(Some("acme"), None, None),
                &page(None, Some(&ci)),
            ),
            start(
                &ring,
                "ten_a",
                "accounts",
                &page(None, Some(&c[..c.len() - 1])),
            ),
            start(
                &KeyRing::generate(),
                "ten_a",
                "accounts",
                &page(None, Some(&c)),
            ),
            start(
                &ring,
                "ten_a",
                "accounts",
                &page(None, Some("not base64 !")),
            ),
            start(&ring, "ten_a", "accounts", &page(None, Some(""))),
            start(
                &ring,
                "ten_a",
                "accounts",
                &page(None, Some(&"A".repeat(4096))),
            ),
        ];
        for (n, r) in foreign.into_iter().enumerate() {
            assert!(
                matches!(r, Err(ServiceError::InvalidRequest(_))),
                "case {n}"
            );
        }
        // One flipped bit anywhere is refused.
        let mut blob = URL_SAFE_NO_PAD.decode(&c).unwrap();
        for i in 0..blob.len() {
            blob[i] ^= 1;
            let tampered = URL_SAFE_NO_PAD.encode(&blob);
            assert!(start(&ring, "ten_a", "accounts", &page(None, Some(&tampered))).is_err());
            blob[i] ^= 1;
        }
    }
}
