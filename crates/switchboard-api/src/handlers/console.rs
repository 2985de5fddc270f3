//! The web console (issue 15): its static pages, embedded in the binary and served under a
//! strict Content-Security-Policy, and its session (`/console/session`): sign-in exchanges a
//! tenant API key for the HttpOnly session cookie the `Tenant` extractor accepts on `/v1`,
//! sign-out deletes it. The console itself only calls the `/v1` API.

use super::Result;
use crate::bodies::ConsoleSignIn;
use crate::extract::console_cookie;
use crate::request_id::RequestId;
use crate::ApiError;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use switchboard_core::ErrorCode;
use switchboard_service::console::{ConsoleService, CSRF_COOKIE, SESSION_COOKIE};
use switchboard_service::Services;

const INDEX_HTML: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");

/// Scripts and styles from this origin only (no inline code, no CDN), no framing, no plugins;
/// the only network peer is this origin's API.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

pub async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `/console/` (a typed or bookmarked trailing slash) is the console too: a permanent
/// redirect to `/console`, so relative asset paths resolve the same way.
pub async fn index_slash() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/console"))
        .finish()
}

pub async fn app_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn app_css() -> HttpResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// The two cookies of a session (`value` None: the clearing pair, `Max-Age=0`).
fn cookies(console: &ConsoleService, value: Option<(&str, &str)>) -> [String; 2] {
    let secure = if console.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    let (token, csrf, age) = match value {
        Some((token, csrf)) => (token, csrf, console.max_age_secs()),
        None => ("", "", 0),
    };
    [
        format!(
            "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}{secure}"
        ),
        format!("{CSRF_COOKIE}={csrf}; Path=/; SameSite=Strict; Max-Age={age}{secure}"),
    ]
}

fn header_of(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The sign-in body, as JSON or `application/x-www-form-urlencoded`.
fn sign_in_body(req: &HttpRequest, body: &[u8]) -> Result<ConsoleSignIn> {
    let content_type = header_of(req, header::CONTENT_TYPE)
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let bad = |what: &str| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the body must be {what} with one field, api_key"),
        )
    };
    match content_type.as_str() {
        "application/json" => serde_json::from_slice(body).map_err(|_| bad("a JSON object")),
        "application/x-www-form-urlencoded" => {
            let mut api_key = None;
            for (k, v) in url::form_urlencoded::parse(body) {
                if k != "api_key" || api_key.is_some() {
                    return Err(bad("a form"));
                }
                api_key = Some(v.into_owned());
            }
            api_key
                .map(|api_key| ConsoleSignIn { api_key })
                .ok_or_else(|| bad("a form"))
        }
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send application/json or application/x-www-form-urlencoded",
        )),
    }
}

/// `POST /console/session`: a valid tenant API key opens a session (201, both cookies set).
/// A request from another origin is refused (no cross-site sign-in).
pub async fn sign_in(
    req: HttpRequest,
    s: web::Data<Services>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let origin = header_of(&req, header::ORIGIN);
    if origin.is_some() {
        s.console.check_origin(origin, None)?;
    }
    let ConsoleSignIn { api_key } = sign_in_body(&req, &body)?;
    let Some(ctx) = s.keys.authenticate(api_key.trim()).await? else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "this API key is not valid (unknown, mistyped or revoked)",
        ));
    };
    let session = s
        .console
        .sign_in(&ctx.with_request_id(RequestId::of(&req)))
        .await?;
    let found = s.console.find(&session.token).await?.ok_or_else(|| {
        ApiError::new(ErrorCode::Internal, "the new console session was not found")
    })?;
    let mut res = HttpResponse::Created();
    res.insert_header((header::CACHE_CONTROL, "no-store"));
    for c in cookies(&s.console, Some((&session.token, &session.csrf_token))) {
        res.append_header((header::SET_COOKIE, c));
    }
    Ok(res.json(found))
}

/// `GET /console/session`: the live session of the cookie (401 without one).
pub async fn get_session(req: HttpRequest, s: web::Data<Services>) -> Result<HttpResponse> {
    let token = console_cookie(&req, SESSION_COOKIE);
    let found = match token {
        Some(token) => s.console.find(&token).await?,
        None => None,
    };
    let found = found
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "no console session; sign in"))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(found))
}

/// `DELETE /console/session`: ends the cookie's session (a write: the CSRF rule applies to a
/// live session) and clears both cookies; 204 also when there was no session.
pub async fn sign_out(req: HttpRequest, s: web::Data<Services>) -> Result<HttpResponse> {
    if let Some(token) = console_cookie(&req, SESSION_COOKIE) {
        if s.console.find(&token).await?.is_some() {
            s.console.check_write(
                &token,
                header_of(
                    &req,
                    header::HeaderName::from_static(switchboard_service::console::CSRF_HEADER),
                ),
                header_of(&req, header::ORIGIN),
                header_of(&req, header::REFERER),
            )?;
            s.console.sign_out(&token, RequestId::of(&req)).await?;
        }
    }
    let mut res = HttpResponse::NoContent();
    res.insert_header((header::CACHE_CONTROL, "no-store"));
    for c in cookies(&s.console, None) {
        res.append_header((header::SET_COOKIE, c));
    }
    Ok(res.finish())
}
