//! Accounts: a tenant's customers, each with its installs (part of [`InstallService`]: deleting
//! an account deletes and revokes its installs).

use crate::error::ServiceError;
use crate::installs::InstallService;
use crate::pagination::{self, PageIn};
use crate::tenant::TenantCtx;
use serde::{Deserialize, Serialize};
use switchboard_core::{ms_to_rfc3339, now_ms, AccountId, IdKind, InstallId};
use switchboard_db::repo::{accounts, installs};
use switchboard_db::NewAccount;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "acme-clinic", "name": "Acme Clinic"}))]
pub struct AccountIn {
    /// Generated (`acc_…`) when absent.
    pub id: Option<AccountId>,
    /// 1 to 200 printable characters, not only spaces.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountOut {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

/// One page of `GET /v1/accounts`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountList {
    pub accounts: Vec<AccountOut>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl From<switchboard_db::Account> for AccountOut {
    fn from(a: switchboard_db::Account) -> Self {
        Self {
            id: a.id,
            name: a.name,
            created_at: ms_to_rfc3339(a.created_at),
        }
    }
}

impl InstallService {
    pub async fn create_account(
        &self,
        t: &TenantCtx,
        input: AccountIn,
    ) -> Result<AccountOut, ServiceError> {
        let id = match input.id {
            Some(id) => id.into(),
            None => IdKind::Account.generate(),
        };
        let name = input.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(ServiceError::InvalidRequest(
                "name must be 1 to 200 printable characters".into(),
            ));
        }
        let row = NewAccount {
            tenant_id: t.tenant_id.clone(),
            id: id.clone(),
            name: name.clone(),
            created_at: now_ms(),
        };
        let created_at = row.created_at;
        let out_id = id.clone();
        let limit = self.settings.limits.max_accounts_per_tenant;
        let inserted = self
            .db
            .run(move |conn| {
                conn.write_transaction(|conn| {
                    if limit > 0 && accounts::count(conn, &row.tenant_id)? >= limit {
                        return Ok(false);
                    }
                    accounts::insert(conn, &row).map(|_| true)
                })
            })
            .await
            .map_err(|e| match e {
                switchboard_db::DbError::Conflict => {
                    ServiceError::AlreadyExists(format!("account '{id}' already exists"))
                }
                other => other.into(),
            })?;
        if !inserted {
            return Err(ServiceError::QuotaExceeded {
                quota: "accounts",
                limit,
            });
        }
        Ok(AccountOut {
            id: out_id,
            name,
            created_at: ms_to_rfc3339(created_at),
        })
    }

    /// One page of the tenant's accounts, oldest first.
    pub async fn list_accounts(
        &self,
        t: &TenantCtx,
        page: PageIn,
    ) -> Result<AccountList, ServiceError> {
        const SCOPE: &str = "accounts";
        let ring = &self.crypto;
        let start = pagination::start(ring, &t.tenant_id, SCOPE, &page)?;
        let tenant = t.tenant_id.clone();
        let page = self
            .db
            .run(move |conn| accounts::list_page(conn, &tenant, start.after.as_ref(), start.limit))
            .await?;
        Ok(AccountList {
            next_cursor: page
                .next
                .map(|after| pagination::seal(ring, &t.tenant_id, SCOPE, &after)),
            accounts: page.rows.into_iter().map(AccountOut::from).collect(),
        })
    }

    pub async fn get_account(
        &self,
        t: &TenantCtx,
        id: &AccountId,
    ) -> Result<AccountOut, ServiceError> {
        self.find_account(t, id).await.map(AccountOut::from)
    }

    pub(crate) async fn find_account(
        &self,
        t: &TenantCtx,
        id: &str,
    ) -> Result<switchboard_db::Account, ServiceError> {
        let (tenant, aid) = (t.tenant_id.clone(), id.to_owned());
        self.db
            .run(move |conn| accounts::find(conn, &tenant, &aid))
            .await?
            .ok_or_else(|| ServiceError::NotFound("account not found".into()))
    }

    /// Deletes the account, revoking and erasing its installs' tokens first.
    pub async fn delete_account(&self, t: &TenantCtx, id: &AccountId) -> Result<(), ServiceError> {
        let account = self.find_account(t, id).await?;
        let (tenant, aid) = (t.tenant_id.clone(), account.id.clone());
        let all = self
            .db
            .run(move |conn| installs::list(conn, &tenant, &aid))
            .await?;
        for install in all {
            let install_id = InstallId::parse(install.id).map_err(ServiceError::internal)?;
            self.delete_install(t, id, &install_id).await?;
        }
        let (tenant, aid) = (t.tenant_id.clone(), account.id.clone());
        self.db
            .run(move |conn| accounts::delete(conn, &tenant, &aid))
            .await?;
        Ok(())
    }
}
