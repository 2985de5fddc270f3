//! The HTTP API of `docs/API.md` on actix-web: routes, the tenant-scoped extractor, one
//! handler file per resource, the single mapping of service errors to problem+json, the
//! callback's HTML page, health, metrics and the OpenAPI document.

mod bodies;
mod error;
mod extract;
mod handlers;
mod metrics;
mod openapi;

pub use error::ApiError;
pub use metrics::Metrics;

use actix_web::web;
use switchboard_service::Services;

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
