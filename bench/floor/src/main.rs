//! The floor of the fixed stack, for `bench/run.sh` (docs/BENCHMARKS.md, "The floor"): a bare
//! actix-web + reqwest pass-through that takes the request a workflow sends Switchboard (POST
//! with a JSON body and an API key, keep-alive) and does only what any such proxy must: compare
//! the key, parse the body, GET the upstream with the bearer over a per-thread keep-alive reqwest
//! client built as Switchboard's is, check that the answer is JSON, and wrap it as Switchboard
//! does (`{"status":…,"data":…,"pages":1}`). No database, audit, metrics, limits, logging,
//! validation of parameters or connector model: what is left is the cost of actix-web, reqwest
//! and the kernel, which no change inside Switchboard can go below.
//!
//! Build: `cargo build --release -p switchboard-bench-floor` (`bench/run.sh` does). Usage:
//! `floor <bind addr> <upstream FHIR base URL> <upstream bearer> <API key>`; it serves
//! `POST /v1/accounts/{account}/installs/{install}/methods/{get_patient|search_patients}`.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

struct Floor {
    base: String,
    bearer: String,
    api_key: String,
}

#[derive(Deserialize)]
struct Call {
    params: HashMap<String, String>,
}

thread_local! {
    static CLIENT: reqwest::Client = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .expect("reqwest client");
}

async fn call(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    body: web::Json<Call>,
    floor: web::Data<Arc<Floor>>,
) -> HttpResponse {
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(floor.api_key.as_str()) {
        return HttpResponse::Unauthorized().finish();
    }
    let (_, _, method) = path.into_inner();
    let url = match (method.as_str(), &body.params) {
        ("get_patient", p) if p.contains_key("id") => format!("{}/Patient/{}", floor.base, p["id"]),
        ("search_patients", p) if p.contains_key("family") => {
            format!("{}/Patient?family={}", floor.base, p["family"])
        }
        _ => return HttpResponse::NotFound().finish(),
    };
    let request = CLIENT.with(|c| {
        c.get(url)
            .bearer_auth(&floor.bearer)
            .header("accept", "application/fhir+json")
    });
    let upstream = match request.send().await {
        Ok(r) => r,
        Err(_) => return HttpResponse::BadGateway().finish(),
    };
    let status = upstream.status().as_u16();
    let data = match upstream.bytes().await {
        Ok(b) => b,
        Err(_) => return HttpResponse::BadGateway().finish(),
    };
    if serde_json::from_slice::<&serde_json::value::RawValue>(&data).is_err() {
        return HttpResponse::BadGateway().finish();
    }
    let head = format!("{{\"status\":{status},\"data\":");
    let mut out = BytesMut::with_capacity(head.len() + data.len() + 12);
    out.put_slice(head.as_bytes());
    out.put_slice(&data);
    out.put_slice(b",\"pages\":1}");
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("cache-control", "no-store"))
        .body(Bytes::from(out))
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bind, base, bearer, api_key] = args.as_slice() else {
        eprintln!("usage: floor <bind addr> <upstream FHIR base URL> <upstream bearer> <API key>");
        std::process::exit(2);
    };
    let floor = Arc::new(Floor {
        base: base.trim_end_matches('/').to_owned(),
        bearer: bearer.clone(),
        api_key: api_key.clone(),
    });
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    actix_web::rt::System::new().block_on(
        HttpServer::new(move || {
            App::new().app_data(web::Data::new(floor.clone())).route(
                "/v1/accounts/{account}/installs/{install}/methods/{method}",
                web::post().to(call),
            )
        })
        .workers(workers)
        .bind(bind.as_str())?
        .run(),
    )
}
