use super::Result;
use crate::extract::{Ids, Tenant};
use actix_web::{web, HttpRequest, HttpResponse};
use switchboard_core::ErrorCode;
use switchboard_core::{AccountId, InstallId, MethodId};
use switchboard_service::methods::MethodIn;
use switchboard_service::Services;

pub async fn call_method(
    t: Tenant,
    s: web::Data<Services>,
    Ids((account, install, method)): Ids<(AccountId, InstallId, MethodId)>,
    req: HttpRequest,
    body: web::Json<MethodIn>,
) -> Result<HttpResponse> {
    let mut keys = req.headers().get_all("idempotency-key");
    let key = match (keys.next(), keys.next()) {
        (None, _) => None,
        (Some(v), None) => Some(v.to_str().map_err(|_| {
            crate::error::ApiError::new(
                ErrorCode::InvalidRequest,
                "Idempotency-Key must be visible ASCII",
            )
        })?),
        (Some(_), Some(_)) => {
            return Err(crate::error::ApiError::new(
                ErrorCode::InvalidRequest,
                "send one Idempotency-Key header",
            ))
        }
    };
    let out = s
        .methods
        .call_method(&t.0, &account, &install, &method, body.into_inner(), key)
        .await?;
    if let Some(location) = &out.location {
        // A Bulk Data kick-off: the job was created; poll it at Location.
        return Ok(HttpResponse::Accepted()
            .content_type("application/json")
            .insert_header(("Cache-Control", "no-store"))
            .insert_header(("Location", location.as_str()))
            .body(out.body));
    }
    let mut res = HttpResponse::Ok();
    res.content_type("application/json")
        .insert_header(("Cache-Control", "no-store"));
    if out.replayed {
        res.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(res.body(out.body))
}
