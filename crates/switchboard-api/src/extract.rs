use crate::error::ApiError;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use switchboard_core::ErrorCode;
use switchboard_service::{Services, TenantCtx};

/// The authenticated tenant of a `/v1` request. Handlers that take it can only reach that
/// tenant's data: every service function they call is scoped by it.
pub struct Tenant(pub TenantCtx);

impl FromRequest for Tenant {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let services = req.app_data::<web::Data<Services>>().cloned();
        let request_id = req
            .extensions()
            .get::<crate::request_id::RequestId>()
            .map(|r| r.as_str().to_owned());
        let key = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| rest.trim().to_owned())
            });
        Box::pin(async move {
            let unauthorized = || {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "send Authorization: Bearer <api key>",
                )
            };
            let services = services.ok_or_else(unauthorized)?;
            let key = key.ok_or_else(unauthorized)?;
            match services.keys.authenticate(&key).await? {
                Some(ctx) => Ok(Tenant(ctx.with_request_id(request_id))),
                None => Err(unauthorized()),
            }
        })
    }
}

/// The ids of a route's path, typed (`AccountId`, `(AccountId, InstallId)`, …): the one place a
/// path segment becomes an id. The segments are deserialised by actix's `web::Path`, so an id
/// that breaks the rules is a 400 `invalid_id` from the one path-error handler
/// (`error::path_config`) before any lookup. Authentication still comes first: when the path is
/// invalid the API key is checked before answering, so a caller without a valid key gets 401
/// whatever the path.
pub struct Ids<T>(pub T);

impl<T: serde::de::DeserializeOwned + 'static> FromRequest for Ids<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        match web::Path::<T>::extract(req).into_inner() {
            Ok(ids) => Box::pin(std::future::ready(Ok(Ids(ids.into_inner())))),
            Err(invalid) => {
                let tenant = Tenant::from_request(req, payload);
                Box::pin(async move {
                    tenant.await?;
                    Err(invalid)
                })
            }
        }
    }
}
