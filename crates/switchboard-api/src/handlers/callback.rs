use actix_web::http::header;
use actix_web::{web, HttpResponse};
use switchboard_service::callback::{CallbackIn, CallbackOutcome, ResultPage};
use switchboard_service::Services;

/// `GET /connector/callback`: the browser lands here after the EHR login.
pub async fn callback(s: web::Data<Services>, q: web::Query<CallbackIn>) -> HttpResponse {
    match s.handle_callback(q.into_inner()).await {
        CallbackOutcome::Redirect(url) => HttpResponse::Found()
            .insert_header((header::LOCATION, url))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header(("Referrer-Policy", "no-referrer"))
            .finish(),
        CallbackOutcome::Page(page) => render(&page),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn render(p: &ResultPage) -> HttpResponse {
    let details = match (&p.install_id, &p.status) {
        (Some(id), Some(status)) => format!(
            "<p class=\"meta\">Install <code>{}</code>, status <code>{}</code>.</p>",
            escape(id),
            escape(status)
        ),
        _ => String::new(),
    };
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}}\
h1{{font-size:1.4rem}}.meta{{color:#666;font-size:.9rem}}</style></head>\
<body><h1>{title}</h1><p>{message}</p>{details}</body></html>",
        title = escape(&p.title),
        message = escape(&p.message),
    );
    HttpResponse::build(
        actix_web::http::StatusCode::from_u16(p.http_status)
            .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
    )
    .content_type("text/html; charset=utf-8")
    .insert_header((header::CACHE_CONTROL, "no-store"))
    .insert_header(("Referrer-Policy", "no-referrer"))
    .insert_header((
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'",
    ))
    .body(body)
}
