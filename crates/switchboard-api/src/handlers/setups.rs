use super::Result;
use crate::error::check_id;
use crate::extract::Tenant;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{Map, Value};
use switchboard_service::Services;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupIn {
    settings: Map<String, Value>,
}

pub async fn put_setup(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<String>,
    body: web::Json<SetupIn>,
) -> Result<HttpResponse> {
    check_id(&path)?;
    Ok(HttpResponse::Ok().json(s.setups.put_setup(&t.0, &path, &body.settings).await?))
}

pub async fn get_setup(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    check_id(&path)?;
    Ok(HttpResponse::Ok().json(s.setups.get_setup(&t.0, &path).await?))
}

pub async fn delete_setup(
    t: Tenant,
    s: web::Data<Services>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    check_id(&path)?;
    s.setups.delete_setup(&t.0, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}
