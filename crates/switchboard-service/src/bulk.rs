//! FHIR Bulk Data export jobs (Bulk Data Access 2.0), a part of method calls: the kick-off of a
//! `kind = "bulk_export"` method (`MethodService::kick_off`, called by `call_method`), the
//! tenant's view of its jobs (get, list, cancel), the output files streamed through chunk by
//! chunk, and the [`BulkPoller`] the server spawns: any replica claims a due job with a lease,
//! polls its status URL with the install's token (refreshed once on a 401), honours
//! `Retry-After` (clamped to `bulk.*_retry_after_secs`) and records `X-Progress`, the manifest
//! or the failure. Every schedule reads the token keeper's clock, so tests move time.
//!
//! The status URL and the manifest (output URLs may be signed) are sealed with the key ring
//! (`bulk_job:{id}:status_url`, `bulk_job:{id}:manifest`); the tenant only ever sees
//! Switchboard URLs.

use crate::cache::Prepared;
use crate::error::ServiceError;
use crate::methods::MethodService;
use crate::pagination::{self, PageIn};
use crate::tenant::TenantCtx;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::{ms_to_rfc3339, AccountId, ErrorCode, IdKind, InstallId, JobId, MethodId};
use switchboard_db::repo::bulk_jobs::{self as repo, BulkJob, PollOutcome};
use switchboard_engine::EngineError;
use switchboard_outbound::{RetryPolicy, SafeUrl};
use url::Url;

/// Longest `X-Progress` text kept (characters).
const MAX_PROGRESS_CHARS: usize = 200;
/// Longest error text kept from an OperationOutcome (characters).
const MAX_ERROR_CHARS: usize = 500;
/// Jobs one poller pass takes at most.
const PASS_LIMIT: i64 = 50;

/// AAD of a job's sealed status URL (key-rotation registry).
pub fn status_url_aad(job_id: &str) -> String {
    format!("bulk_job:{job_id}:status_url")
}

/// AAD of a job's sealed manifest (key-rotation registry).
pub fn manifest_aad(job_id: &str) -> String {
    format!("bulk_job:{job_id}:manifest")
}

/// The answer to a kick-off: 202 with this body and `Location: <status_url>`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobAccepted {
    pub job_id: String,
    /// The job's Switchboard URL (path): poll it with GET, cancel it with DELETE.
    pub status_url: String,
}

/// One output (or error) file of a completed job, served by Switchboard.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobFileOut {
    /// The FHIR resource type of the file's lines.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// `/v1/accounts/{a}/installs/{i}/jobs/{job}/files/{n}`.
    pub url: String,
}

/// The manifest of a completed job, with Switchboard URLs in place of the EHR's.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ManifestOut {
    /// The EHR's `transactionTime`.
    #[schema(value_type = Object)]
    pub transaction_time: Value,
    /// Whether the EHR wants its access token on file downloads (Switchboard sends it).
    pub requires_access_token: bool,
    pub output: Vec<JobFileOut>,
    pub error: Vec<JobFileOut>,
}

/// A Bulk Data export job as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobOut {
    pub id: String,
    pub account_id: String,
    pub install_id: String,
    /// The method that started it (`export_group`, ...).
    pub method: String,
    /// `accepted`, `in_progress`, `completed`, `failed`, `cancelled` or `expired`.
    pub state: String,
    /// The EHR's last `X-Progress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Status polls made so far.
    pub polls: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestOut>,
    /// When the export was deleted upstream (its files are no longer served).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_deleted_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// `GET .../jobs`: one page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobOut>,
    pub next_cursor: Option<String>,
}

/// An output file on its way to the caller: chunks as they arrive from the EHR.
pub struct FileStream {
    pub body: Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>,
}

impl std::fmt::Debug for FileStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileStream")
    }
}

/// The EHR's manifest (Bulk Data Access 2.0 "Response - Complete Status").
#[derive(Debug, Deserialize)]
struct UpstreamManifest {
    #[serde(rename = "transactionTime", default)]
    transaction_time: Value,
    #[serde(rename = "requiresAccessToken", default)]
    requires_access_token: bool,
    #[serde(default)]
    output: Vec<UpstreamFile>,
    #[serde(default)]
    error: Vec<UpstreamFile>,
}

#[derive(Debug, Deserialize)]
struct UpstreamFile {
    #[serde(rename = "type")]
    kind: String,
    url: String,
    #[serde(default)]
    count: Option<u64>,
}

impl UpstreamManifest {
    /// Output files then error files: file `n` of the API.
    fn files(&self) -> impl Iterator<Item = &UpstreamFile> {
        self.output.iter().chain(self.error.iter())
    }
}

fn job_path(account: &str, install: &str, job: &str) -> String {
    format!("/v1/accounts/{account}/installs/{install}/jobs/{job}")
}

/// Control characters dropped, at most `max` characters.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn not_found() -> ServiceError {
    ServiceError::NotFound("export job not found".into())
}

impl MethodService {
    fn seal_json(&self, plain: &[u8], aad: String) -> Vec<u8> {
        self.crypto.encrypt(plain, aad)
    }

    fn open_status_url(&self, job: &BulkJob) -> Result<Url, ServiceError> {
        let plain = self
            .crypto
            .decrypt(&job.status_url, status_url_aad(&job.id))?;
        let text = String::from_utf8(plain).map_err(ServiceError::internal)?;
        Url::parse(&text).map_err(ServiceError::internal)
    }

    fn open_manifest(&self, job: &BulkJob) -> Result<Option<UpstreamManifest>, ServiceError> {
        let Some(sealed) = &job.manifest else {
            return Ok(None);
        };
        let plain = self.crypto.decrypt(sealed, manifest_aad(&job.id))?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(ServiceError::internal)
    }

    fn job_out(&self, job: &BulkJob) -> Result<JobOut, ServiceError> {
        let base = job_path(&job.account_id, &job.install_id, &job.id);
        let manifest = self.open_manifest(job)?.map(|m| {
            let file = |n: usize, f: &UpstreamFile| JobFileOut {
                kind: f.kind.clone(),
                count: f.count,
                url: format!("{base}/files/{n}"),
            };
            let outputs = m.output.len();
            ManifestOut {
                transaction_time: m.transaction_time.clone(),
                requires_access_token: m.requires_access_token,
                output: m
                    .output
                    .iter()
                    .enumerate()
                    .map(|(n, f)| file(n, f))
                    .collect(),
                error: m
                    .error
                    .iter()
                    .enumerate()
                    .map(|(n, f)| file(outputs + n, f))
                    .collect(),
            }
        });
        Ok(JobOut {
            id: job.id.clone(),
            account_id: job.account_id.clone(),
            install_id: job.install_id.clone(),
            method: job.method_id.clone(),
            state: job.state.clone(),
            progress: job.progress.clone(),
            polls: job.attempts,
            error: job.error.clone(),
            manifest,
            upstream_deleted_at: job.upstream_deleted_at.map(ms_to_rfc3339),
            created_at: ms_to_rfc3339(job.created_at),
            updated_at: ms_to_rfc3339(job.updated_at),
            completed_at: job.completed_at.map(ms_to_rfc3339),
        })
    }

    /// The kick-off of a `bulk_export` method (validated, scope checked): `GET [base]/...$export`
    /// with `Accept: application/fhir+json` and `Prefer: respond-async`, one refresh and resend
    /// on a 401. A 202 with `Content-Location` stores the job (first poll due at once).
    pub(crate) async fn kick_off(
        &self,
        p: Arc<Prepared>,
        params: &switchboard_engine::ValidParams<'_>,
        method_id: &MethodId,
        upstream_status: &mut Option<u16>,
    ) -> Result<JobAccepted, ServiceError> {
        let connector = p.connector.clone();
        let p = self.ensure_token(p).await?;
        self.limits
            .acquire(&connector, crate::limits::Outgoing::Call, &p.id)
            .await?;
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.settings.upstream.call_deadline_ms);
        let mut attempt = p;
        for round in 0..2 {
            let bearer = attempt
                .bearer
                .as_ref()
                .ok_or_else(|| ServiceError::internal("authorized install without a token"))?;
            let mut req = switchboard_engine::build_request(
                &attempt.fhir_base,
                params,
                &attempt.headers,
                bearer.expose_secret(),
            )
            .map_err(crate::methods::engine_error)?;
            let headers = req.headers_mut();
            headers.insert(
                reqwest::header::ACCEPT,
                reqwest::header::HeaderValue::from_static("application/fhir+json"),
            );
            headers.insert(
                reqwest::header::HeaderName::from_static("prefer"),
                reqwest::header::HeaderValue::from_static("respond-async"),
            );
            let resp =
                tokio::time::timeout_at(deadline, self.outbound.send(req, RetryPolicy::OnThrottle))
                    .await
                    .map_err(|_| crate::methods::engine_error(EngineError::Timeout))?
                    .map_err(|e| crate::methods::engine_error(e.into()))?;
            *upstream_status = Some(resp.status);
            match resp.status {
                202 => return self.store_job(&attempt, method_id, &resp).await,
                401 if round == 0 && attempt.can_refresh() => {
                    tracing::info!(install = %attempt.id, "bulk kick-off answered 401; refreshing once");
                    let refreshed = self
                        .refresh_install(&attempt.id, attempt.token_version)
                        .await?;
                    if refreshed.token_version == attempt.token_version {
                        return Err(ServiceError::Upstream {
                            code: ErrorCode::UpstreamUnavailable,
                            detail: "the EHR rejected the access token and its token endpoint did not issue a new one; retry later".into(),
                            retry_after_secs: Some(5),
                            issues: vec![],
                        });
                    }
                    attempt = refreshed;
                }
                200..=299 => {
                    return Err(ServiceError::Upstream {
                        code: ErrorCode::UpstreamError,
                        detail: format!(
                            "the EHR answered the $export kick-off with HTTP {} instead of 202 Accepted (no asynchronous job)",
                            resp.status
                        ),
                        retry_after_secs: None,
                        issues: vec![],
                    })
                }
                status => {
                    return Err(crate::methods::engine_error(
                        switchboard_engine::status_error(status, &resp.headers, &resp.body),
                    ))
                }
            }
        }
        Err(crate::methods::engine_error(EngineError::Unauthorized))
    }

    async fn store_job(
        &self,
        p: &Prepared,
        method_id: &MethodId,
        resp: &switchboard_outbound::OutboundResponse,
    ) -> Result<JobAccepted, ServiceError> {
        let upstream_error = |detail: &str| ServiceError::Upstream {
            code: ErrorCode::UpstreamError,
            detail: detail.to_owned(),
            retry_after_secs: None,
            issues: vec![],
        };
        let location = resp
            .headers
            .get(reqwest::header::CONTENT_LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                upstream_error("the EHR accepted the $export kick-off without a Content-Location")
            })?;
        let status_url = p
            .fhir_base
            .join(location.trim())
            .map_err(|_| upstream_error("the EHR's Content-Location is not a URL"))?;
        self.outbound
            .check_url(&status_url)
            .map_err(|e| ServiceError::Upstream {
                code: ErrorCode::UpstreamNotAllowed,
                detail: format!("the EHR's status URL is refused by the outbound policy: {e}"),
                retry_after_secs: None,
                issues: vec![],
            })?;
        let now = self.tokens.now_ms();
        let id = IdKind::Job.generate();
        let job = BulkJob {
            id: id.clone(),
            tenant_id: p.tenant_id.clone(),
            account_id: p.account_id.clone(),
            install_id: p.id.clone(),
            method_id: method_id.to_string(),
            status_url: self.seal_json(status_url.as_str().as_bytes(), status_url_aad(&id)),
            state: repo::ACCEPTED.into(),
            progress: None,
            next_poll_at: now,
            attempts: 0,
            manifest: None,
            error: None,
            downloaded: String::new(),
            created_at: now,
            updated_at: now,
            completed_at: None,
            upstream_deleted_at: None,
            lease_owner: None,
            lease_until: None,
        };
        self.db.run(move |conn| repo::insert(conn, &job)).await?;
        tracing::info!(install = %p.id, job = %id, "bulk export accepted upstream");
        Ok(JobAccepted {
            status_url: job_path(&p.account_id, &p.id, &id),
            job_id: id,
        })
    }

    async fn find_job(
        &self,
        t: &TenantCtx,
        account_id: &AccountId,
        install_id: &InstallId,
        job_id: &JobId,
    ) -> Result<BulkJob, ServiceError> {
        let (tid, iid, jid) = (
            t.tenant_id().to_owned(),
            install_id.to_string(),
            job_id.to_string(),
        );
        let job = self
            .db
            .run(move |conn| repo::find(conn, &tid, &iid, &jid))
            .await?
            .ok_or_else(not_found)?;
        if job.account_id != account_id.as_str() {
            return Err(not_found());
        }
        Ok(job)
    }

    /// `GET .../jobs/{job}`.
    pub async fn get_job(
        &self,
        t: &TenantCtx,
        account_id: &AccountId,
        install_id: &InstallId,
        job_id: &JobId,
    ) -> Result<JobOut, ServiceError> {
        let job = self.find_job(t, account_id, install_id, job_id).await?;
        self.job_out(&job)
    }

    /// `GET .../jobs`: the install's jobs, oldest first, one page.
    pub async fn list_jobs(
        &self,
        t: &TenantCtx,
        account_id: &AccountId,
        install_id: &InstallId,
        page: PageIn,
    ) -> Result<JobList, ServiceError> {
        let scope = format!("jobs:{install_id}");
        let start = pagination::start(&self.crypto, t.tenant_id(), &scope, &page)?;
        let (tid, iid) = (t.tenant_id().to_owned(), install_id.to_string());
        let page = self
            .db
            .run(move |conn| repo::list_page(conn, &tid, &iid, start.after.as_ref(), start.limit))
            .await?;
        let jobs = page
            .rows
            .iter()
            .filter(|j| j.account_id == account_id.as_str())
            .map(|j| self.job_out(j))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JobList {
            jobs,
            next_cursor: page
                .next
                .map(|after| pagination::seal(&self.crypto, t.tenant_id(), &scope, &after)),
        })
    }

    /// `DELETE .../jobs/{job}`: cancels the job and deletes the export upstream (DELETE on the
    /// status URL; a 404 there means it is already gone). A finished job is only cleaned up.
    pub async fn cancel_job(
        &self,
        t: &TenantCtx,
        account_id: &AccountId,
        install_id: &InstallId,
        job_id: &JobId,
    ) -> Result<JobOut, ServiceError> {
        let job = self.find_job(t, account_id, install_id, job_id).await?;
        if job.upstream_deleted_at.is_none() {
            self.delete_upstream(&job).await?;
        }
        let now = self.tokens.now_ms();
        let id = job.id.clone();
        let active = matches!(
            job.state.as_str(),
            repo::ACCEPTED | repo::IN_PROGRESS | repo::COMPLETED
        );
        self.db
            .run(move |conn| {
                if active {
                    repo::set_state(conn, &id, repo::CANCELLED, now)?;
                }
                repo::mark_deleted_upstream(conn, &id, now)
            })
            .await?;
        self.audit.admin(
            t.tenant_id(),
            Some(t),
            "bulk_export.cancelled",
            200,
            crate::audit::Target {
                account_id: Some(job.account_id.clone()),
                install_id: Some(job.install_id.clone()),
                connector_id: None,
            },
        )?;
        let job = self.find_job(t, account_id, install_id, job_id).await?;
        self.job_out(&job)
    }

    /// The install prepared with a usable token, for work that has no tenant request (polls,
    /// upstream deletes).
    async fn prepared_for_job(&self, job: &BulkJob) -> Result<Arc<Prepared>, ServiceError> {
        let p = match self.cache.get(&job.install_id) {
            Some(p) => p,
            None => self.load_install(&job.install_id).await?,
        };
        self.ensure_token(p).await
    }

    /// Sends `build(bearer)` with the install's token; one refresh and resend on a 401.
    async fn send_authorized(
        &self,
        job: &BulkJob,
        build: impl Fn(Option<&str>) -> reqwest::Request,
        with_token: bool,
    ) -> Result<switchboard_outbound::OutboundResponse, ServiceError> {
        let mut p = self.prepared_for_job(job).await?;
        for round in 0..2 {
            let bearer = with_token
                .then(|| p.bearer.as_ref().map(|b| b.expose_secret()))
                .flatten();
            let resp = self
                .outbound
                .send(build(bearer), RetryPolicy::Never)
                .await
                .map_err(|e| crate::methods::engine_error(e.into()))?;
            if resp.status == 401 && with_token && round == 0 && p.can_refresh() {
                p = self.refresh_install(&p.id, p.token_version).await?;
                continue;
            }
            return Ok(resp);
        }
        unreachable!("two rounds at most")
    }

    /// DELETE on the status URL (Bulk Data "Delete a Bulk Data Request"): 2xx or 404 is done.
    async fn delete_upstream(&self, job: &BulkJob) -> Result<(), ServiceError> {
        let url = self.open_status_url(job)?;
        let resp = self
            .send_authorized(
                job,
                |bearer| {
                    bulk_request(
                        reqwest::Method::DELETE,
                        &url,
                        bearer,
                        "application/fhir+json",
                    )
                },
                true,
            )
            .await?;
        match resp.status {
            200..=299 | 404 | 410 => Ok(()),
            status => Err(crate::methods::engine_error(
                switchboard_engine::status_error(status, &resp.headers, &resp.body),
            )),
        }
    }

    /// `GET .../jobs/{job}/files/{n}`: the output file streamed from the EHR as it arrives
    /// (never whole in memory, no size cap, `bulk.file_deadline_secs` for the whole file), with
    /// the install's token when the manifest says `requiresAccessToken`. One audit record per
    /// download. When every file of the job has been downloaded completely, the export is
    /// deleted upstream.
    pub async fn download_file(
        self: &Arc<Self>,
        t: &TenantCtx,
        account_id: &AccountId,
        install_id: &InstallId,
        job_id: &JobId,
        index: u32,
    ) -> Result<FileStream, ServiceError> {
        let job = self.find_job(t, account_id, install_id, job_id).await?;
        if job.state != repo::COMPLETED || job.upstream_deleted_at.is_some() {
            return Err(ServiceError::BulkJobNotReady(format!(
                "the export job is {}{}; files are served while it is completed and not yet deleted upstream",
                job.state,
                if job.upstream_deleted_at.is_some() {
                    " and deleted upstream"
                } else {
                    ""
                }
            )));
        }
        let manifest = self.open_manifest(&job)?.ok_or_else(not_found)?;
        let total = manifest.files().count();
        let file = manifest
            .files()
            .nth(index as usize)
            .ok_or_else(|| ServiceError::NotFound("the job has no such file".into()))?;
        let url = Url::parse(&file.url).map_err(|_| ServiceError::Upstream {
            code: ErrorCode::UpstreamError,
            detail: "the EHR's manifest lists a file URL that is not a URL".into(),
            retry_after_secs: None,
            issues: vec![],
        })?;
        let with_token = manifest.requires_access_token;
        let deadline = Duration::from_secs(self.settings.bulk.file_deadline_secs);
        let mut p = self.prepared_for_job(&job).await?;
        let mut resp = None;
        for round in 0..2 {
            let bearer = with_token
                .then(|| p.bearer.as_ref().map(|b| b.expose_secret()))
                .flatten();
            let req = bulk_request(
                reqwest::Method::GET,
                &url,
                bearer,
                "application/fhir+ndjson",
            );
            let r = self
                .outbound
                .open_stream(req, deadline)
                .await
                .map_err(|e| crate::methods::engine_error(e.into()))?;
            if r.status().as_u16() == 401 && with_token && round == 0 && p.can_refresh() {
                p = self.refresh_install(&p.id, p.token_version).await?;
                continue;
            }
            resp = Some(r);
            break;
        }
        let resp = resp.ok_or_else(|| crate::methods::engine_error(EngineError::Unauthorized))?;
        let status = resp.status().as_u16();
        self.audit.admin(
            t.tenant_id(),
            Some(t),
            "bulk_export.file_downloaded",
            if (200..300).contains(&status) {
                200
            } else {
                502
            },
            crate::audit::Target {
                account_id: Some(job.account_id.clone()),
                install_id: Some(job.install_id.clone()),
                connector_id: None,
            },
        )?;
        if !(200..300).contains(&status) {
            let headers = resp.headers().clone();
            let body = resp.bytes().await.unwrap_or_default();
            return Err(crate::methods::engine_error(
                switchboard_engine::status_error(status, &headers, &body),
            ));
        }
        let safe = SafeUrl::new(&url);
        let failed = Arc::new(AtomicBool::new(false));
        let seen_failure = failed.clone();
        let chunks = resp.bytes_stream().map(move |r| {
            r.map_err(|e| {
                seen_failure.store(true, Ordering::Relaxed);
                let e = switchboard_outbound::classify(e, &safe);
                tracing::warn!(error = %e, "bulk file download broke off");
                std::io::Error::other(e.to_string())
            })
        });
        let this = self.clone();
        let done = futures_util::stream::once(async move {
            if !failed.load(Ordering::Relaxed) {
                this.file_done(job, index as usize, total).await;
            }
            None
        })
        .filter_map(|x: Option<Result<Bytes, std::io::Error>>| async move { x });
        Ok(FileStream {
            body: Box::pin(chunks.chain(done)),
        })
    }

    /// A file was served whole: record it, and delete the export upstream after the last one.
    async fn file_done(&self, job: BulkJob, index: usize, total: usize) {
        let now = self.tokens.now_ms();
        let id = job.id.clone();
        let set = match self
            .db
            .run(move |conn| repo::mark_downloaded(conn, &id, index, now))
            .await
        {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "could not record a bulk file download");
                return;
            }
        };
        if set.len() < total {
            return;
        }
        match self.delete_upstream(&job).await {
            Ok(()) => {
                let id = job.id.clone();
                if let Err(e) = self
                    .db
                    .run(move |conn| repo::mark_deleted_upstream(conn, &id, now))
                    .await
                {
                    tracing::warn!(job = %job.id, error = %e, "could not record the upstream delete");
                }
            }
            // Retried by the poller's retention pass.
            Err(e) => {
                tracing::warn!(job = %job.id, code = %e.code(), "deleting the export upstream failed")
            }
        }
    }

    /// One poll of a claimed job; returns what to record.
    async fn poll_job(&self, job: &BulkJob) -> PollOutcome {
        let cfg = &self.settings.bulk;
        let now = self.tokens.now_ms();
        let clamp = |d: Option<Duration>| -> i64 {
            let secs = d
                .map(|d| d.as_secs())
                .unwrap_or(cfg.default_retry_after_secs)
                .clamp(cfg.min_retry_after_secs, cfg.max_retry_after_secs);
            now.saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
        };
        // Still running: in progress once the EHR answered a poll, else still accepted.
        let keep = |answered: bool, progress: Option<String>, next: i64| PollOutcome {
            state: if answered || job.state == repo::IN_PROGRESS {
                repo::IN_PROGRESS.into()
            } else {
                repo::ACCEPTED.into()
            },
            progress: progress.or_else(|| job.progress.clone()),
            next_poll_at: next,
            ..PollOutcome::default()
        };
        let failed = |error: String| PollOutcome {
            state: repo::FAILED.into(),
            progress: job.progress.clone(),
            next_poll_at: now,
            error: Some(clean(&error, MAX_ERROR_CHARS)),
            ..PollOutcome::default()
        };
        let url = match self.open_status_url(job) {
            Ok(u) => u,
            Err(e) => return failed(format!("the status URL cannot be read ({})", e.code())),
        };
        let resp = match self
            .send_authorized(
                job,
                |bearer| bulk_request(reqwest::Method::GET, &url, bearer, "application/json"),
                true,
            )
            .await
        {
            Ok(r) => r,
            // Timeouts, connection failures, a token endpoint that is down: try again later.
            Err(e) => {
                tracing::warn!(job = %job.id, code = %e.code(), "bulk status poll failed; retrying later");
                return keep(false, None, clamp(None));
            }
        };
        let retry_after = switchboard_outbound::parse_retry_after(&resp.headers);
        match resp.status {
            202 => {
                let progress = resp
                    .headers
                    .get("x-progress")
                    .and_then(|v| v.to_str().ok())
                    .map(|s| clean(s, MAX_PROGRESS_CHARS));
                keep(true, progress, clamp(retry_after))
            }
            200 => match serde_json::from_slice::<UpstreamManifest>(&resp.body) {
                Ok(m) if m.files().all(|f| Url::parse(&f.url).is_ok()) => PollOutcome {
                    state: repo::COMPLETED.into(),
                    progress: job.progress.clone(),
                    next_poll_at: now,
                    manifest: Some(self.seal_json(&resp.body, manifest_aad(&job.id))),
                    error: None,
                    completed_at: Some(now),
                },
                _ => failed("the EHR's completion manifest is not a Bulk Data manifest".into()),
            },
            // Polled too often, or briefly unavailable: wait as asked.
            429 | 503 => keep(false, None, clamp(retry_after)),
            status => {
                let e = switchboard_engine::status_error(status, &resp.headers, &resp.body);
                let text = e
                    .issues()
                    .iter()
                    .find_map(|i| i.diagnostics.clone().or_else(|| i.details_text.clone()))
                    .unwrap_or_default();
                failed(if text.is_empty() {
                    format!("the EHR reported the export failed (HTTP {status})")
                } else {
                    format!("the EHR reported the export failed (HTTP {status}): {text}")
                })
            }
        }
    }
}

/// A status poll, DELETE or file GET: `Accept`, and the bearer token when given.
fn bulk_request(
    method: reqwest::Method,
    url: &Url,
    bearer: Option<&str>,
    accept: &'static str,
) -> reqwest::Request {
    let mut req = reqwest::Request::new(method, url.clone());
    let headers = req.headers_mut();
    headers.insert(
        reqwest::header::ACCEPT,
        reqwest::header::HeaderValue::from_static(accept),
    );
    if let Some(b) = bearer {
        if let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {b}")) {
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
    }
    req
}

/// Polls the status URLs of due jobs (the server spawns [`BulkPoller::run`] when `bulk.poll`;
/// every replica may). A job is claimed with its lease before each poll, so one poller polls it
/// at a time, and a replica that dies mid-poll leaves the lease to lapse for another one.
pub struct BulkPoller {
    pub(crate) methods: Arc<MethodService>,
}

impl BulkPoller {
    /// Polls forever, every `bulk.poll_interval_ms`.
    pub async fn run(self: Arc<Self>) {
        let every = Duration::from_millis(self.methods.settings.bulk.poll_interval_ms.max(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.run_once().await {
                tracing::warn!(code = %e.code(), "bulk job poller pass failed");
            }
        }
    }

    /// One pass: polls every job due by the clock whose lease it gets, then deletes upstream
    /// the completed exports past `bulk.retention_secs`. Returns the jobs polled.
    pub async fn run_once(&self) -> Result<usize, ServiceError> {
        let m = &self.methods;
        let now = m.tokens.now_ms();
        let due =
            m.db.run(move |conn| repo::due(conn, now, PASS_LIMIT))
                .await?;
        let owner = m.tokens.instance_id().to_owned();
        let ttl = i64::try_from(m.settings.bulk.lease_ttl_ms).unwrap_or(i64::MAX);
        let mut polled = 0;
        for id in due {
            let (o, jid) = (owner.clone(), id.clone());
            let Some(job) =
                m.db.run(move |conn| repo::claim(conn, &jid, &o, now, ttl))
                    .await?
            else {
                continue;
            };
            if !matches!(job.state.as_str(), repo::ACCEPTED | repo::IN_PROGRESS) {
                let (o, jid) = (owner.clone(), id.clone());
                m.db.run(move |conn| repo::release(conn, &jid, &o)).await?;
                continue;
            }
            let out = m.poll_job(&job).await;
            let at = m.tokens.now_ms();
            let (o, jid) = (owner.clone(), id.clone());
            let state = out.state.clone();
            let written =
                m.db.run(move |conn| repo::record_poll(conn, &jid, &o, at, &out))
                    .await?;
            if written {
                polled += 1;
                tracing::debug!(job = %id, state = %state, "bulk job polled");
            } else {
                tracing::info!(job = %id, "bulk job changed or its lease was lost meanwhile; poll discarded");
            }
        }
        self.expire(now).await?;
        Ok(polled)
    }

    /// Completed exports past their retention: deleted upstream, state `expired`.
    async fn expire(&self, now: i64) -> Result<(), ServiceError> {
        let m = &self.methods;
        let before = now.saturating_sub(m.settings.bulk.retention_ms());
        let ids =
            m.db.run(move |conn| repo::to_delete_upstream(conn, before, now, PASS_LIMIT))
                .await?;
        for id in ids {
            let jid = id.clone();
            let Some(job) = m.db.run(move |conn| repo::get(conn, &jid)).await? else {
                continue;
            };
            match m.delete_upstream(&job).await {
                Ok(()) => {
                    m.db.run(move |conn| {
                        repo::set_state(conn, &id, repo::EXPIRED, now)?;
                        repo::mark_deleted_upstream(conn, &id, now)
                    })
                    .await?;
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, code = %e.code(), "deleting an expired export upstream failed; retrying next pass")
                }
            }
        }
        Ok(())
    }
}
