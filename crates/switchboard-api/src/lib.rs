//! The HTTP API of `docs/API.md` on actix-web: routes, the tenant-scoped extractor, one
//! handler file per resource, the single mapping of service errors to problem+json, the
//! callback's HTML page, health, metrics and the OpenAPI document, and the middleware every
//! request passes ([`observe`]: request id, log span, request metrics).

mod bodies;
mod error;
mod extract;
mod handlers;
mod metrics;
mod openapi;
mod request_id;

pub use error::ApiError;
pub use metrics::{InScope, Metrics};
pub use request_id::{RequestId, MAX_REQUEST_ID_CHARS, X_REQUEST_ID};

use std::future::Future;
use std::time::Instant;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::{web, HttpMessage};
use switchboard_service::Services;
use tracing::Instrument;

/// Registers every route. `max_body_bytes` bounds JSON bodies (413 beyond).
pub fn configure(cfg: &mut web::ServiceConfig, services: Services, metrics: Metrics) {
    let max_body = services.settings().server.max_body_bytes;
    cfg.app_data(web::Data::new(services))
        .app_data(web::Data::new(metrics))
        .app_data(error::json_config(max_body))
        .app_data(error::query_config())
        .app_data(error::path_config())
        .service(handlers::routes())
        .default_service(web::to(handlers::not_found_route));
}

/// Registers `/metrics` alone, for the dedicated listener of `metrics.bind`.
pub fn configure_metrics_listener(
    cfg: &mut web::ServiceConfig,
    services: Services,
    metrics: Metrics,
) {
    cfg.app_data(web::Data::new(services))
        .app_data(web::Data::new(metrics))
        .route(
            "/metrics",
            web::get().to(handlers::metrics_on_dedicated_listener),
        )
        .default_service(web::to(handlers::not_found_route));
}

/// The middleware of every request (`App::wrap_fn(move |req, srv| observe(&m, req, srv))`):
/// takes or makes the request id ([`RequestId`]), runs the request inside a `request` span
/// carrying it and under the application's metrics recorder, records latency by route template
/// and status, and echoes the id in `X-Request-Id`.
pub fn observe<S, B>(
    metrics: &Metrics,
    req: ServiceRequest,
    srv: &S,
) -> InScope<impl Future<Output = Result<ServiceResponse<B>, actix_web::Error>>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    let started = Instant::now();
    let method = static_method(req.method());
    let request_id = RequestId::accept_or_generate(req.headers());
    req.extensions_mut().insert(request_id.clone());
    let span = tracing::info_span!("request", request_id = %request_id);
    let fut = span.in_scope(|| srv.call(req));
    metrics.in_scope(
        async move {
            let mut res = fut.await?;
            // Read after routing: actix then looks the pattern up by the matched resource's
            // index instead of matching the path against every route's regex a second time
            // (that cost ~25% of a get_patient call's CPU).
            let route = res
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".into());
            let status = res.status().as_u16();
            let elapsed = started.elapsed();
            switchboard_metrics::http_request(method, &route, status, elapsed);
            tracing::debug!(method, route = %route, status, elapsed_us = elapsed.as_micros() as u64, "request");
            res.headers_mut()
                .insert(X_REQUEST_ID, request_id.header_value());
            Ok(res)
        }
        .instrument(span),
    )
}

fn static_method(m: &actix_web::http::Method) -> &'static str {
    match *m {
        actix_web::http::Method::GET => "GET",
        actix_web::http::Method::POST => "POST",
        actix_web::http::Method::PUT => "PUT",
        actix_web::http::Method::PATCH => "PATCH",
        actix_web::http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}
