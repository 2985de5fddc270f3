use actix_web::http::header;
use actix_web::{web, HttpResponse};
use switchboard_service::callback::{CallbackIn, CallbackOutcome, ResultPage};
use switchboard_service::Services;

/// The callback's query, parsed leniently: a person's browser lands here, so even a malformed
/// query gets the HTML result page (never JSON). The first occurrence of a parameter wins.
fn parse_query(query: &str) -> CallbackIn {
    let mut q = CallbackIn::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match k.as_ref() {
            "code" => &mut q.code,
            "state" => &mut q.state,
            "error" => &mut q.error,
            "error_description" => &mut q.error_description,
            "iss" => &mut q.iss,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(v.into_owned());
        }
    }
    q
}

/// `GET /connector/callback`: the browser lands here after the EHR login.
pub async fn callback(s: web::Data<Services>, req: actix_web::HttpRequest) -> HttpResponse {
    let request_id = crate::request_id::RequestId::of(&req);
    match s
        .callback
        .handle_callback(parse_query(req.query_string()), request_id)
        .await
    {
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
    let mut res = HttpResponse::build(
        actix_web::http::StatusCode::from_u16(p.http_status())
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
    );
    if p.http_status() == 503 {
        // Every 503 says when to retry, the person's page included.
        res.insert_header((header::RETRY_AFTER, "60"));
    }
    res.content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'",
        ))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::parse_query;

    #[test]
    fn first_value_wins_and_unknown_params_are_ignored() {
        let q = parse_query("state=a&state=b&code=c%2Fd&foo=bar&iss=https%3A%2F%2Fx");
        assert_eq!(q.state.as_deref(), Some("a"));
        assert_eq!(q.code.as_deref(), Some("c/d"));
        assert_eq!(q.iss.as_deref(), Some("https://x"));
        assert!(q.error.is_none());
        assert!(parse_query("%zz=&&=").state.is_none());
    }
}
