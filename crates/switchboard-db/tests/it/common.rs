//! Rows the repository tests build on (tenant, account, install).

use switchboard_core::InstallStatus;
use switchboard_db::{repo, Account, Db, NewInstall, Tenant};

pub fn tenant(db: &Db, id: &str) -> Tenant {
    let mut conn = db.get().unwrap();
    repo::tenants::insert(
        &mut conn,
        &Tenant {
            id: id.to_owned(),
            name: format!("Tenant {id}"),
            allowed_return_urls: "[]".to_owned(),
            created_at: 1_000,
        },
    )
    .unwrap()
}

pub fn account(db: &Db, tenant_id: &str, id: &str) -> Account {
    let mut conn = db.get().unwrap();
    repo::accounts::insert(
        &mut conn,
        &Account {
            tenant_id: tenant_id.to_owned(),
            id: id.to_owned(),
            name: format!("Account {id}"),
            created_at: 2_000,
        },
    )
    .unwrap()
}

pub fn new_install(tenant_id: &str, account_id: &str, id: &str) -> NewInstall {
    NewInstall {
        id: id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        account_id: account_id.to_owned(),
        connector_id: "epic".to_owned(),
        auth_type: "smart_standalone".to_owned(),
        status: InstallStatus::PendingAuthorization,
        settings: "{}".to_owned(),
        return_url: Some("https://console.example/done".to_owned()),
        created_at: 3_000,
        updated_at: 3_000,
    }
}

/// Tenant `t`, account `acc`, install `id` (pending).
pub fn install(db: &Db, t: &str, acc: &str, id: &str) -> switchboard_db::Install {
    let mut conn = db.get().unwrap();
    repo::installs::insert(&mut conn, &new_install(t, acc, id)).unwrap()
}
