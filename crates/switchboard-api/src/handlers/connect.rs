//! The hosted connect page, `GET`/`POST /connect/{token}`: server-rendered HTML for the person
//! connecting their EHR (no script, no external asset: the stylesheet is compiled in and allowed
//! by a per-response CSP nonce). Every answer is a page, never JSON: unknown links 404, used or
//! expired links 410, a form without its form token 403, invalid settings 422 with the form
//! again. The form token is a double-submit value: a random cookie (HttpOnly, SameSite=Strict)
//! that the form repeats in a hidden field; a cross-site POST carries neither the cookie nor an
//! allowed `Origin`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use std::collections::BTreeMap;
use switchboard_core::ErrorCode;
use switchboard_service::connect::{ConnectPage, ConnectRefusal};
use switchboard_service::{FieldError, ServiceError, Services};

const CSS: &str = include_str!("connect/connect.css");
const CSRF_COOKIE: &str = "sb_connect_csrf";
const CSRF_FIELD: &str = "csrf";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The value of cookie `name` in the request (no cookie feature in this build of actix-web).
fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn plausible_form_token(t: &str) -> bool {
    (20..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Equal without an early exit on the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

struct Page {
    status: StatusCode,
    title: String,
    body: String,
    /// The form token cookie to set with this page.
    set_csrf: Option<String>,
}

fn respond(s: &Services, page: Page) -> HttpResponse {
    let nonce = switchboard_core::random_token(16);
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\"><title>{title}</title>\
<style nonce=\"{nonce}\">{CSS}</style></head><body><main>{body}</main></body></html>",
        title = escape(&page.title),
        body = page.body,
    );
    // The POST answers with a redirect to the EHR's authorize endpoint, which `form-action`
    // governs too: any https origin (http as well where loopback test upstreams are allowed).
    let insecure = s.settings().security.allow_insecure_upstreams;
    let csp = format!(
        "default-src 'none'; style-src 'nonce-{nonce}'; img-src data:; \
form-action 'self' https:{}; frame-ancestors 'none'; base-uri 'none'",
        if insecure { " http:" } else { "" }
    );
    let mut res = HttpResponse::build(page.status);
    if page.status == StatusCode::SERVICE_UNAVAILABLE {
        res.insert_header((header::RETRY_AFTER, "60"));
    }
    if let Some(value) = page.set_csrf {
        let secure = if s.settings().server.public_url.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        res.insert_header((
            header::SET_COOKIE,
            format!("{CSRF_COOKIE}={value}; HttpOnly; SameSite=Strict; Max-Age=3600{secure}"),
        ));
    }
    res.content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Content-Security-Policy", csp))
        .body(html)
}

/// A page with a heading and a paragraph: the answer for every link that cannot be used.
fn message(status: u16, title: &str, text: &str) -> Page {
    Page {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        title: format!("{title} | Switchboard"),
        body: format!(
            "<p class=\"eyebrow\">Secure connection</p><h1>{}</h1><p>{}</p>",
            escape(title),
            escape(text)
        ),
        set_csrf: None,
    }
}

/// The page for a service error: its status from the one error table.
fn error_page(e: &ServiceError) -> Page {
    let code = e.code();
    match code {
        ErrorCode::NotFound => message(
            code.status(),
            "This link is not valid",
            "Check that you opened the whole link. If it still does not work, ask the application that sent it for a new one.",
        ),
        ErrorCode::ConnectLinkUsed => message(
            code.status(),
            "This link was already used",
            "Each connect link works only once. If the connection was not completed, ask the application that sent it for a new link.",
        ),
        ErrorCode::ConnectLinkExpired => message(
            code.status(),
            "This link has expired",
            "Connect links are valid for a short time. Ask the application that sent it for a new link.",
        ),
        ErrorCode::ServiceUnavailable => message(
            code.status(),
            "Please try again in a minute",
            "A temporary problem prevented the connection. Nothing was changed.",
        ),
        ErrorCode::Internal => {
            tracing::error!(error = %e, "connect page: internal error");
            message(
                code.status(),
                "The connection could not be started",
                "Something went wrong on our side. Nothing was changed. Please try again later.",
            )
        }
        _ => message(
            code.status(),
            "The connection could not be started",
            &format!(
                "{}. Nothing was changed. Contact the application that sent you this link.",
                e
            ),
        ),
    }
}

fn form_page(
    page: &ConnectPage,
    csrf: &str,
    values: &BTreeMap<String, String>,
    errors: &[FieldError],
    notice: Option<&str>,
) -> String {
    let name = escape(&page.connector_name);
    let mut out = format!(
        "<p class=\"eyebrow\">Secure connection</p>\
<h1>Connect your {name}</h1>\
<p class=\"lead\">An application is asking for access to your organisation's {name}. \
After you choose <strong>Connect</strong>, you sign in at {name} and approve the access there. \
Your password is never shared with the application.</p>"
    );
    if !page.reads.is_empty() {
        out.push_str("<h2>It will be able to read</h2><ul class=\"access\">");
        for r in &page.reads {
            out.push_str(&format!("<li>{}</li>", escape(r)));
        }
        out.push_str("</ul>");
    }
    if !page.writes.is_empty() {
        out.push_str("<h2>It will also be able to create</h2><ul class=\"access\">");
        for w in &page.writes {
            out.push_str(&format!("<li>{}</li>", escape(w)));
        }
        out.push_str("</ul>");
    }
    out.push_str("<form method=\"post\">");
    out.push_str(&format!(
        "<input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{}\">",
        escape(csrf)
    ));
    if !errors.is_empty() || notice.is_some() {
        out.push_str(
            "<div class=\"summary\" role=\"alert\" tabindex=\"-1\"><h2>Please check the form</h2>",
        );
        if let Some(n) = notice {
            out.push_str(&format!("<p>{}</p>", escape(n)));
        }
        if !errors.is_empty() {
            out.push_str("<ul>");
            for e in errors {
                let label = page
                    .fields
                    .iter()
                    .find(|f| f.key == e.field)
                    .map_or(e.field.as_str(), |f| f.label.as_str());
                let anchor = page
                    .fields
                    .iter()
                    .any(|f| f.key == e.field)
                    .then(|| format!("#f-{}", escape(&e.field)));
                match anchor {
                    Some(a) => out.push_str(&format!(
                        "<li><a href=\"{a}\">{}: {}</a></li>",
                        escape(label),
                        escape(&e.message)
                    )),
                    None => out.push_str(&format!(
                        "<li>{}: {}</li>",
                        escape(label),
                        escape(&e.message)
                    )),
                }
            }
            out.push_str("</ul>");
        }
        out.push_str("</div>");
    }
    if !page.fields.is_empty() {
        out.push_str(&format!("<h2>Your {name} details</h2>"));
    }
    for f in &page.fields {
        let key = escape(&f.key);
        let id = format!("f-{key}");
        let error = errors.iter().find(|e| e.field == f.key);
        let mut described = Vec::new();
        out.push_str("<div class=\"field\">");
        out.push_str(&format!(
            "<label for=\"{id}\">{}{}</label>",
            escape(&f.label),
            if f.required {
                " <span class=\"req\">(required)</span>"
            } else {
                " <span class=\"req\">(optional)</span>"
            }
        ));
        if let Some(h) = &f.help {
            out.push_str(&format!(
                "<p class=\"help\" id=\"{id}-help\">{}</p>",
                escape(h)
            ));
            described.push(format!("{id}-help"));
        }
        if let Some(e) = error {
            out.push_str(&format!(
                "<p class=\"error\" id=\"{id}-error\">{}</p>",
                escape(&e.message)
            ));
            described.push(format!("{id}-error"));
        }
        let mut attrs = String::new();
        if f.required {
            attrs.push_str(" required");
        }
        if error.is_some() {
            attrs.push_str(" aria-invalid=\"true\"");
        }
        if !described.is_empty() {
            attrs.push_str(&format!(" aria-describedby=\"{}\"", described.join(" ")));
        }
        let value = values.get(&f.key).map(|v| escape(v)).unwrap_or_default();
        let options = &f.options;
        if options.is_empty() {
            out.push_str(&format!(
                "<input id=\"{id}\" name=\"{key}\" type=\"{}\" value=\"{value}\" autocomplete=\"off\" spellcheck=\"false\"{attrs}>",
                f.input
            ));
        } else {
            out.push_str(&format!("<select id=\"{id}\" name=\"{key}\"{attrs}>"));
            if !f.required {
                out.push_str("<option value=\"\">(default)</option>");
            }
            for o in options {
                let o = escape(o);
                let selected = if o == value { " selected" } else { "" };
                out.push_str(&format!("<option value=\"{o}\"{selected}>{o}</option>"));
            }
            out.push_str("</select>");
        }
        out.push_str("</div>");
    }
    out.push_str("<button type=\"submit\">Connect</button></form>");
    out.push_str(&format!(
        "<p class=\"fine\">This link works once and expires at {} UTC. Switchboard stores the tokens {name} issues encrypted and uses them only for the access listed above.</p>",
        escape(&expiry_text(page.expires_at_ms))
    ));
    out
}

/// `2026-12-05 00:15` from epoch milliseconds.
fn expiry_text(ms: i64) -> String {
    let rfc = switchboard_core::ms_to_rfc3339(ms);
    rfc.get(..16).unwrap_or(&rfc).replace('T', " ")
}

fn form_token(req: &HttpRequest) -> String {
    cookie(req, CSRF_COOKIE)
        .filter(|c| plausible_form_token(c))
        .unwrap_or_else(|| switchboard_core::random_token(24))
}

fn title_of(page: &ConnectPage) -> String {
    format!("Connect {} | Switchboard", page.connector_name)
}

/// `GET /connect/{token}`: the form of a pending link, or the page saying why it cannot be used.
pub async fn page(
    s: web::Data<Services>,
    req: HttpRequest,
    token: web::Path<String>,
) -> HttpResponse {
    let page = match s.installs.connect_page(&token).await {
        Ok(page) => {
            let csrf = form_token(&req);
            Page {
                status: StatusCode::OK,
                title: title_of(&page),
                body: form_page(&page, &csrf, &BTreeMap::new(), &[], None),
                set_csrf: Some(csrf),
            }
        }
        Err(e) => error_page(&e),
    };
    respond(&s, page)
}

/// Whether the request's `Origin` (when the browser sent one) is this server's public origin.
/// `null` passes: browsers send it for a form posted from a `Referrer-Policy: no-referrer` page
/// (this one); the SameSite=Strict form-token cookie is then what refuses a cross-site post.
fn same_origin(s: &Services, req: &HttpRequest) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    if origin.as_bytes() == b"null" {
        return true;
    }
    let ours = url::Url::parse(&s.settings().server.public_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    origin.to_str().is_ok_and(|o| o == ours)
}

/// `POST /connect/{token}`: the connect form. Creates the install and answers 303 to the EHR's
/// authorize URL; otherwise a page (the form again with its errors, or why the link is unusable).
pub async fn submit(
    s: web::Data<Services>,
    req: HttpRequest,
    token: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let mut values = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        values
            .entry(k.into_owned())
            .or_insert_with(|| v.into_owned());
    }
    let sent = values.remove(CSRF_FIELD).unwrap_or_default();
    let verified = cookie(&req, CSRF_COOKIE)
        .is_some_and(|c| plausible_form_token(&c) && same(&c, &sent))
        && same_origin(&s, &req);
    if !verified {
        let code = ErrorCode::ConnectFormRejected;
        return respond(
            &s,
            message(
                code.status(),
                "This form could not be verified",
                "Nothing was changed. Open the connect link again in this browser and submit the form from there.",
            ),
        );
    }
    let request_id = crate::request_id::RequestId::of(&req);
    match s.installs.submit_connect(&token, &values, request_id).await {
        Ok(authorize_url) => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, authorize_url))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header(("Referrer-Policy", "no-referrer"))
            .finish(),
        Err(ConnectRefusal::Form {
            page,
            errors,
            message,
        }) => {
            let code = ErrorCode::InvalidSettings;
            respond(
                &s,
                Page {
                    status: StatusCode::from_u16(code.status())
                        .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
                    title: format!("Check the form: {}", title_of(&page)),
                    body: form_page(&page, &sent, &values, &errors, message.as_deref()),
                    set_csrf: None,
                },
            )
        }
        Err(ConnectRefusal::Error(e)) => respond(&s, error_page(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::{escape, same};

    #[test]
    fn escaping_and_comparison() {
        assert_eq!(
            escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
