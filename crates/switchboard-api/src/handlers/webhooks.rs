use super::Result;
use crate::extract::{Ids, Tenant};
use actix_web::{web, HttpResponse};
use switchboard_core::{EventId, WebhookId};
use switchboard_service::pagination::PageIn;
use switchboard_service::webhooks::{WebhookIn, WebhookPatch};
use switchboard_service::Services;

pub async fn create_webhook(
    t: Tenant,
    s: web::Data<Services>,
    body: web::Json<WebhookIn>,
) -> Result<HttpResponse> {
    let created = s.webhooks.create_webhook(&t.0, body.into_inner()).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(created))
}

pub async fn list_webhooks(
    t: Tenant,
    s: web::Data<Services>,
    query: web::Query<PageIn>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.webhooks.list_webhooks(&t.0, query.into_inner()).await?))
}

pub async fn get_webhook(
    t: Tenant,
    s: web::Data<Services>,
    Ids(id): Ids<WebhookId>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.webhooks.get_webhook(&t.0, &id).await?))
}

pub async fn patch_webhook(
    t: Tenant,
    s: web::Data<Services>,
    Ids(id): Ids<WebhookId>,
    body: web::Json<WebhookPatch>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(
        s.webhooks
            .patch_webhook(&t.0, &id, body.into_inner())
            .await?,
    ))
}

pub async fn delete_webhook(
    t: Tenant,
    s: web::Data<Services>,
    Ids(id): Ids<WebhookId>,
) -> Result<HttpResponse> {
    s.webhooks.delete_webhook(&t.0, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn list_deliveries(
    t: Tenant,
    s: web::Data<Services>,
    Ids(id): Ids<WebhookId>,
    query: web::Query<PageIn>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(
        s.webhooks
            .list_deliveries(&t.0, &id, query.into_inner())
            .await?,
    ))
}

pub async fn replay_delivery(
    t: Tenant,
    s: web::Data<Services>,
    Ids((id, event)): Ids<(WebhookId, EventId)>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Accepted().json(s.webhooks.replay(&t.0, &id, &event).await?))
}
