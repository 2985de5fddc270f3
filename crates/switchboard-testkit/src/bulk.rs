//! The FHIR Bulk Data Access 2.0 asynchronous pattern, served by [`FakeFhir`](crate::fhir::FakeFhir)
//! under its FHIR base (behind the same bearer-token check as every other FHIR route):
//!
//! - kick-off `GET Patient/$export`, `Group/{id}/$export`, `$export` (needs
//!   `Prefer: respond-async`) -> 202 with `Content-Location: {base}$bulk-status/{job}`;
//! - status `GET $bulk-status/{job}`: `polls_before_done` answers 202 with `Retry-After` and
//!   `X-Progress`, then 200 with the manifest (or the configured failure);
//! - `DELETE $bulk-status/{job}` -> 202 (404 once deleted);
//! - files `GET $bulk-files/{job}/{n}`: NDJSON generated line by line while it is sent (never
//!   built whole), `count` resources of about 300 bytes each (plus `line_padding`).
//!
//! Every call is counted ([`BulkStats`]).

use std::collections::BTreeMap;
use std::convert::Infallible;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

/// How the fake answers exports.
#[derive(Debug, Clone)]
pub struct BulkConfig {
    /// Status polls answered 202 (in progress) before the manifest.
    pub polls_before_done: usize,
    /// `Retry-After` (seconds) of an in-progress answer.
    pub retry_after_secs: u64,
    /// Output files: (resource type, resources in the file).
    pub files: Vec<(String, usize)>,
    /// The manifest's `requiresAccessToken` (the file route checks the token either way).
    pub requires_access_token: bool,
    /// When set, the status poll after `polls_before_done` answers this status with this
    /// OperationOutcome instead of the manifest.
    pub fail_with: Option<(u16, Value)>,
    /// Extra bytes of narrative text in each resource (to make large files from few lines).
    pub line_padding: usize,
}

impl Default for BulkConfig {
    fn default() -> Self {
        Self {
            polls_before_done: 2,
            retry_after_secs: 2,
            files: vec![("Patient".into(), 3), ("Observation".into(), 10)],
            requires_access_token: true,
            fail_with: None,
            line_padding: 0,
        }
    }
}

/// Counters of what the fake received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkStats {
    pub kickoffs: usize,
    /// Kick-offs refused for lacking `Prefer: respond-async`.
    pub refused_kickoffs: usize,
    pub status_polls: usize,
    pub deletes: usize,
    pub file_downloads: usize,
    /// The query of each kick-off, in order.
    pub kickoff_queries: Vec<String>,
    /// The path of each kick-off relative to the FHIR base, in order.
    pub kickoff_paths: Vec<String>,
}

#[derive(Debug, Clone)]
struct Job {
    polls: usize,
    deleted: bool,
    request: String,
}

#[derive(Debug, Default)]
pub(crate) struct BulkState {
    pub(crate) config: BulkConfig,
    jobs: BTreeMap<String, Job>,
    pub(crate) stats: BulkStats,
}

fn fhir(status: StatusCode, body: Value) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, crate::fhir::FHIR_JSON))
        .body(body.to_string())
}

fn outcome(status: StatusCode, code: &str, text: &str) -> HttpResponse {
    fhir(status, crate::fhir::operation_outcome("error", code, text))
}

/// Routes a request under the FHIR base to the bulk handlers; `None` when it is not one.
pub(crate) fn route(
    state: &mut BulkState,
    method: &str,
    segments: &[&str],
    query: Option<&str>,
    prefer: Option<&str>,
    base: &str,
) -> Option<HttpResponse> {
    Some(match (method, segments) {
        ("GET", ["Patient", "$export"])
        | ("GET", ["$export"])
        | ("GET", ["Group", _, "$export"]) => {
            if !prefer.is_some_and(|p| p.to_ascii_lowercase().contains("respond-async")) {
                state.stats.refused_kickoffs += 1;
                return Some(outcome(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "Prefer: respond-async is required",
                ));
            }
            state.stats.kickoffs += 1;
            state
                .stats
                .kickoff_queries
                .push(query.unwrap_or("").to_owned());
            state.stats.kickoff_paths.push(segments.join("/"));
            let id = format!("bulk-{}", state.jobs.len() + 1);
            let request = format!(
                "{base}{}{}",
                segments.join("/"),
                query.map(|q| format!("?{q}")).unwrap_or_default()
            );
            state.jobs.insert(
                id.clone(),
                Job {
                    polls: 0,
                    deleted: false,
                    request,
                },
            );
            HttpResponse::Accepted()
                .insert_header((header::CONTENT_LOCATION, format!("{base}$bulk-status/{id}")))
                .finish()
        }
        ("GET", ["$bulk-status", id]) => {
            state.stats.status_polls += 1;
            let cfg = state.config.clone();
            let Some(job) = state.jobs.get_mut(*id).filter(|j| !j.deleted) else {
                return Some(outcome(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "No such export",
                ));
            };
            job.polls += 1;
            if job.polls <= cfg.polls_before_done {
                let pct = job.polls * 100 / (cfg.polls_before_done + 1);
                return Some(
                    HttpResponse::Accepted()
                        .insert_header((header::RETRY_AFTER, cfg.retry_after_secs.to_string()))
                        .insert_header(("X-Progress", format!("{pct}% done")))
                        .finish(),
                );
            }
            if let Some((status, body)) = cfg.fail_with {
                return Some(fhir(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    body,
                ));
            }
            let output: Vec<Value> = cfg
                .files
                .iter()
                .enumerate()
                .map(|(n, (kind, count))| {
                    json!({ "type": kind, "url": format!("{base}$bulk-files/{id}/{n}"), "count": count })
                })
                .collect();
            HttpResponse::Ok().content_type("application/json").body(
                json!({
                    "transactionTime": "2026-12-01T00:00:00Z",
                    "request": job.request,
                    "requiresAccessToken": cfg.requires_access_token,
                    "output": output,
                    "error": []
                })
                .to_string(),
            )
        }
        ("DELETE", ["$bulk-status", id]) => {
            state.stats.deletes += 1;
            match state.jobs.get_mut(*id).filter(|j| !j.deleted) {
                Some(job) => {
                    job.deleted = true;
                    HttpResponse::Accepted().finish()
                }
                None => outcome(StatusCode::NOT_FOUND, "not-found", "No such export"),
            }
        }
        ("GET", ["$bulk-files", id, n]) => {
            state.stats.file_downloads += 1;
            let deleted = state.jobs.get(*id).is_none_or(|j| j.deleted);
            let file = n
                .parse::<usize>()
                .ok()
                .and_then(|n| state.config.files.get(n).cloned());
            let (Some((kind, count)), false) = (file, deleted) else {
                return Some(outcome(StatusCode::NOT_FOUND, "not-found", "No such file"));
            };
            HttpResponse::Ok()
                .content_type("application/fhir+ndjson")
                .streaming(ndjson_lines(kind, count, state.config.line_padding))
        }
        _ => return None,
    })
}

/// `count` resources of `kind`, one JSON line each, generated as the stream is read.
pub fn ndjson_lines(
    kind: String,
    count: usize,
    padding: usize,
) -> impl futures_util::Stream<Item = Result<web::Bytes, Infallible>> {
    // Lines are grouped into chunks of ~64 KiB so the transfer is not one write per line.
    const PER_CHUNK: usize = 200;
    let chunks = count.div_ceil(PER_CHUNK);
    futures_util::stream::iter((0..chunks).map(move |c| {
        let mut buf = String::with_capacity(PER_CHUNK * (320 + padding));
        for i in c * PER_CHUNK..((c + 1) * PER_CHUNK).min(count) {
            buf.push_str(&line(&kind, i, padding));
            buf.push('\n');
        }
        Ok(web::Bytes::from(buf))
    }))
}

/// One fictional resource of about 300 bytes plus `padding` bytes of narrative.
pub fn line(kind: &str, i: usize, padding: usize) -> String {
    let mut v = json!({
        "resourceType": kind,
        "id": format!("{}-{i:07}", kind.to_ascii_lowercase()),
        "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4", "display": "Heart rate" }] },
        "subject": { "reference": format!("Patient/pat-{:04}", i % 1000) },
        "effectiveDateTime": "2026-01-01T00:00:00Z",
        "valueQuantity": { "value": 60 + (i % 40), "unit": "beats/minute" }
    });
    if padding > 0 {
        v["text"] =
            json!({ "status": "generated", "div": format!("<div>{}</div>", "x".repeat(padding)) });
    }
    v.to_string()
}
