use crate::Metrics;
use actix_web::{web, HttpResponse};
use serde_json::json;
use switchboard_service::Services;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn readyz(s: web::Data<Services>) -> super::Result<HttpResponse> {
    if s.ready().await {
        Ok(HttpResponse::Ok().json(json!({ "status": "ready" })))
    } else {
        Err(crate::ApiError::new(
            switchboard_core::ErrorCode::ServiceUnavailable,
            "the database or the connector catalogue is not ready",
        ))
    }
}

pub async fn metrics(m: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(m.render())
}
