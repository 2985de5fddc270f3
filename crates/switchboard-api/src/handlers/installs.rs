use super::Result;
use crate::error::check_id;
use crate::extract::Tenant;
use actix_web::{web, HttpResponse};
use serde_json::json;
use switchboard_service::installs::{AuthorizeIn, InstallIn};
use switchboard_service::Services;

pub async fn create_install(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<String>,
    body: web::Json<InstallIn>,
) -> Result<HttpResponse> {
    check_id(&path)?;
    let created = s
        .installs
        .create_install(&t.0, &path, body.into_inner())
        .await?;
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(created))
}

pub async fn list_installs(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    check_id(&path)?;
    Ok(
        HttpResponse::Ok()
            .json(json!({ "installs": s.installs.list_installs(&t.0, &path).await? })),
    )
}

pub async fn get_install(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (account, install) = path.into_inner();
    check_id(&account)?;
    check_id(&install)?;
    Ok(HttpResponse::Ok().json(s.installs.get_install(&t.0, &account, &install).await?))
}

pub async fn delete_install(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (account, install) = path.into_inner();
    check_id(&account)?;
    check_id(&install)?;
    s.installs.delete_install(&t.0, &account, &install).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn authorize_install(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<(String, String)>,
    body: Option<web::Json<AuthorizeIn>>,
) -> Result<HttpResponse> {
    let (account, install) = path.into_inner();
    check_id(&account)?;
    check_id(&install)?;
    let input = body
        .map(|b| b.into_inner())
        .unwrap_or(AuthorizeIn { return_url: None });
    let url = s
        .installs
        .authorize_install(&t.0, &account, &install, input)
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "authorize_url": url })))
}
