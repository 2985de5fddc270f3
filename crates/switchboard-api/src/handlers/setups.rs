use super::Result;
use crate::bodies::SetupIn;
use crate::extract::{Ids, Tenant};
use actix_web::{web, HttpResponse};
use switchboard_core::ConnectorId;
use switchboard_service::signing_keys::RotateIn;
use switchboard_service::Services;

pub async fn put_setup(
    t: Tenant,
    s: web::Data<Services>,
    Ids(connector): Ids<ConnectorId>,
    body: web::Json<SetupIn>,
) -> Result<HttpResponse> {
    let out = s
        .setups
        .put_setup_with_key(&t.0, &connector, &body.settings, body.signing_key.as_ref())
        .await?;
    Ok(HttpResponse::Ok().json(out))
}

/// `POST /v1/connectors/{connector}/setup/keys/rotate` (body optional: `{"alg": "ES384"}`).
pub async fn rotate_setup_keys(
    t: Tenant,
    s: web::Data<Services>,
    Ids(connector): Ids<ConnectorId>,
    body: Option<web::Json<RotateIn>>,
) -> Result<HttpResponse> {
    let input = body.map(|b| b.into_inner()).unwrap_or_default();
    Ok(HttpResponse::Ok().json(s.setups.rotate_keys(&t.0, &connector, &input).await?))
}

/// `GET /jwks/{jwks_id}.json`: a setup's public JWK Set. No authentication (the EHR fetches
/// it); cacheable; 404 for an unknown id.
pub async fn jwks(s: web::Data<Services>, path: web::Path<String>) -> Result<HttpResponse> {
    let id = path.into_inner();
    let not_found =
        || crate::ApiError::new(switchboard_core::ErrorCode::NotFound, "no such JWK Set");
    if !switchboard_service::signing_keys::valid_jwks_id(&id) {
        return Err(not_found());
    }
    let keys = s.setup_keys.jwks(&id).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok()
        .insert_header((
            "Cache-Control",
            format!("public, max-age={}", s.setup_keys.jwks_max_age_secs()),
        ))
        .content_type("application/json")
        .body(keys.to_string()))
}

pub async fn get_setup(
    t: Tenant,
    s: web::Data<Services>,
    Ids(connector): Ids<ConnectorId>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.setups.get_setup(&t.0, &connector).await?))
}

pub async fn delete_setup(
    t: Tenant,
    s: web::Data<Services>,
    Ids(connector): Ids<ConnectorId>,
) -> Result<HttpResponse> {
    s.setups.delete_setup(&t.0, &connector).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /jwks/{name}` without the `.json` form of a JWK Set id.
pub async fn jwks_unknown() -> Result<HttpResponse> {
    Err(crate::ApiError::new(
        switchboard_core::ErrorCode::NotFound,
        "no such JWK Set",
    ))
}
