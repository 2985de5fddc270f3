use super::Result;
use crate::error::check_id;
use crate::extract::Tenant;
use actix_web::{web, HttpResponse};
use switchboard_service::methods::MethodIn;
use switchboard_service::Services;

pub async fn call_method(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<(String, String, String)>,
    body: web::Json<MethodIn>,
) -> Result<HttpResponse> {
    let (account, install, method) = path.into_inner();
    check_id(&account)?;
    check_id(&install)?;
    check_id(&method)?;
    let out = s
        .methods
        .call_method(&t.0, &account, &install, &method, body.into_inner())
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .body(out))
}
