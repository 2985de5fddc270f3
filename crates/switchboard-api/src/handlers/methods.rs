use super::Result;
use crate::extract::{Ids, Tenant};
use actix_web::{web, HttpResponse};
use switchboard_core::{AccountId, InstallId, MethodId};
use switchboard_service::methods::MethodIn;
use switchboard_service::Services;

pub async fn call_method(
    t: Tenant,
    s: web::Data<Services>,
    Ids((account, install, method)): Ids<(AccountId, InstallId, MethodId)>,
    body: web::Json<MethodIn>,
) -> Result<HttpResponse> {
    let out = s
        .methods
        .call_method(&t.0, &account, &install, &method, body.into_inner())
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .body(out))
}
