use super::Result;
use crate::extract::{Ids, Tenant};
use actix_web::{web, HttpResponse};
use switchboard_core::AgentSessionId;
use switchboard_service::agent_sessions::AgentSessionIn;
use switchboard_service::pagination::PageIn;
use switchboard_service::Services;

pub async fn create_agent_session(
    t: Tenant,
    s: web::Data<Services>,
    body: web::Json<AgentSessionIn>,
) -> Result<HttpResponse> {
    let created = s.agent_sessions.create(&t.0, body.into_inner()).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(created))
}

pub async fn list_agent_sessions(
    t: Tenant,
    s: web::Data<Services>,
    query: web::Query<PageIn>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(s.agent_sessions.list(&t.0, query.into_inner()).await?))
}

pub async fn revoke_agent_session(
    t: Tenant,
    s: web::Data<Services>,
    Ids(id): Ids<AgentSessionId>,
) -> Result<HttpResponse> {
    s.agent_sessions.revoke(&t.0, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}
