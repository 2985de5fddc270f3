//! Accounts: a tenant's customers, each with its installs (part of [`InstallService`]: deleting
//! an account deletes and revokes its installs).

use crate::error::ServiceError;
use crate::installs::InstallService;
use crate::tenant::TenantCtx;
use serde::{Deserialize, Serialize};
use switchboard_core::{ms_to_rfc3339, now_ms, valid_external_id, IdKind};
use switchboard_db::repo::accounts;
use switchboard_db::NewAccount;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountIn {
    pub id: Option<String>,
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct AccountOut {
    pub id: String,
    pub name: String,
    pub created_at: String,
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
            Some(id) if valid_external_id(&id) => id,
            Some(_) => {
                return Err(ServiceError::InvalidRequest(
                    "id must be 1 to 64 characters of A-Z a-z 0-9 _ . - and not start with '.'"
                        .into(),
                ))
            }
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
        self.db
            .run(move |conn| accounts::insert(conn, &row))
            .await
            .map_err(|e| match e {
                switchboard_db::DbError::Conflict => {
                    ServiceError::AlreadyExists(format!("account '{id}' already exists"))
                }
                other => other.into(),
            })?;
        Ok(AccountOut {
            id: out_id,
            name,
            created_at: ms_to_rfc3339(created_at),
        })
    }

    pub async fn list_accounts(&self, t: &TenantCtx) -> Result<Vec<AccountOut>, ServiceError> {
        let tenant = t.tenant_id.clone();
        let rows = self
            .db
            .run(move |conn| accounts::list(conn, &tenant))
            .await?;
        Ok(rows.into_iter().map(AccountOut::from).collect())
    }

    pub async fn get_account(&self, t: &TenantCtx, id: &str) -> Result<AccountOut, ServiceError> {
        self.find_account(t, id).await.map(AccountOut::from)
    }

    pub(crate) async fn find_account(
        &self,
        t: &TenantCtx,
        id: &str,
    ) -> Result<switchboard_db::Account, ServiceError> {
        if !valid_external_id(id) {
            return Err(ServiceError::NotFound("account not found".into()));
        }
        let (tenant, aid) = (t.tenant_id.clone(), id.to_owned());
        self.db
            .run(move |conn| accounts::find(conn, &tenant, &aid))
            .await?
            .ok_or_else(|| ServiceError::NotFound("account not found".into()))
    }

    /// Deletes the account, revoking and erasing its installs' tokens first.
    pub async fn delete_account(&self, t: &TenantCtx, id: &str) -> Result<(), ServiceError> {
        let account = self.find_account(t, id).await?;
        for install in self.list_installs(t, &account.id).await? {
            self.delete_install(t, &account.id, &install.id).await?;
        }
        let (tenant, aid) = (t.tenant_id.clone(), account.id.clone());
        self.db
            .run(move |conn| accounts::delete(conn, &tenant, &aid))
            .await?;
        Ok(())
    }
}
