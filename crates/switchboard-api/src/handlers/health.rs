use crate::Metrics;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
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

/// `/metrics` on the main listener: 404 when `metrics.bind` moved it to its own listener.
pub async fn metrics(
    req: HttpRequest,
    m: web::Data<Metrics>,
    s: web::Data<Services>,
) -> super::Result<HttpResponse> {
    if m.on_dedicated_listener() {
        return Err(crate::ApiError::new(
            switchboard_core::ErrorCode::NotFound,
            "no such route",
        ));
    }
    scrape(&req, &m, &s)
}

/// `/metrics` on the listener of `metrics.bind`.
pub async fn metrics_on_dedicated_listener(
    req: HttpRequest,
    m: web::Data<Metrics>,
    s: web::Data<Services>,
) -> super::Result<HttpResponse> {
    scrape(&req, &m, &s)
}

/// Checks `metrics.token` (when set), samples the pool gauges and renders.
fn scrape(req: &HttpRequest, m: &Metrics, s: &Services) -> super::Result<HttpResponse> {
    if let Some(token) = m.token() {
        // The same parsing as the API's (the scheme is case-insensitive, RFC 7235 §2.1).
        let presented = crate::extract::bearer_token(req);
        if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
            return Err(crate::ApiError::new(
                switchboard_core::ErrorCode::Unauthorized,
                "/metrics requires the metrics token as a bearer token",
            ));
        }
    }
    let pool = s.db().pool_usage();
    m.with(|| switchboard_metrics::db_pool(pool.connections, pool.idle, pool.max));
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(m.render()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
