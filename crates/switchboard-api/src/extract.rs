use crate::error::ApiError;
use actix_web::dev::Payload;
use actix_web::http::{header, Method};
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use switchboard_core::ErrorCode;
use switchboard_service::{console, Services, TenantCtx};

/// The authenticated tenant of a `/v1` request. Handlers that take it can only reach that
/// tenant's data: every service function they call is scoped by it. Authenticated by the API
/// key (`Authorization: Bearer`), or, without that header, by the web console's session cookie;
/// a cookie-authenticated write must carry the session's `X-CSRF-Token` and come from the
/// public origin (403 `csrf_rejected` otherwise, before the handler runs).
pub struct Tenant(pub TenantCtx);

impl FromRequest for Tenant {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let services = req.app_data::<web::Data<Services>>().cloned();
        let request_id = crate::request_id::RequestId::of(req);
        let key = bearer_token(req).map(str::to_owned);
        // Without an Authorization header, the web console's session cookie authenticates the
        // same API; a write must then pass the CSRF rule before anything is read or written.
        let session = key
            .is_none()
            .then(|| console_cookie(req, console::SESSION_COOKIE))
            .flatten();
        let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        let header_str = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let csrf = (
            header_str(header::HeaderName::from_static(console::CSRF_HEADER)),
            header_str(header::ORIGIN),
            header_str(header::REFERER),
        );
        Box::pin(async move {
            let unauthorized = || {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "send Authorization: Bearer <api key>",
                )
            };
            let services = services.ok_or_else(unauthorized)?;
            if let Some(token) = session {
                // Checked before the first await: a refused write fails on the first poll, ahead
                // of any body extractor of the same handler (actix polls them in order).
                if write {
                    let (sent, origin, referer) = csrf;
                    services.console.check_write(
                        &token,
                        sent.as_deref(),
                        origin.as_deref(),
                        referer.as_deref(),
                    )?;
                }
                let Some(ctx) = services.console.authenticate(&token).await? else {
                    return Err(ApiError::new(
                        ErrorCode::Unauthorized,
                        "the console session has ended; sign in again (or send Authorization: Bearer <api key>)",
                    ));
                };
                services.keys.check_rate(&ctx)?;
                return Ok(Tenant(ctx.with_request_id(request_id)));
            }
            let key = key.ok_or_else(unauthorized)?;
            match services.keys.authenticate(&key).await? {
                Some(ctx) => Ok(Tenant(ctx.with_request_id(request_id))),
                None => Err(unauthorized()),
            }
        })
    }
}

/// The token of the request's `Authorization: Bearer <token>` header (scheme matched without
/// regard to case, token trimmed), if it has one: the API key of `/v1`, the agent session token
/// of `/mcp`. Each caller answers its absence with its own 401.
pub(crate) fn bearer_token(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The value of cookie `name` in the request's `Cookie` header(s), if any.
pub(crate) fn console_cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name && !v.is_empty()).then(|| v.to_owned())
        })
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
