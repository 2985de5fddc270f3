//! The audit writer: records are queued on a bounded channel and a background task writes
//! them in batches (up to [`BATCH_MAX`] rows, or what arrived within [`BATCH_WINDOW`]) in one
//! transaction each. Queuing never waits: when the buffer is full the record is dropped and
//! counted (`switchboard_audit_dropped_total`), or, with `audit.fail_closed`, the caller gets
//! 503 with Retry-After. Queuing a record does not wake the writer either (only the first
//! record of a batch, a full batch waiting, or a flush does), so a call pays no cross-thread
//! wakeup for its record. A leaf: it knows the database and the metrics, no other service.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Sha256;
use switchboard_crypto::KeyRing;

use switchboard_config::AuditSettings;
use switchboard_db::{repo, AuditEvent, AuditRecord, Db, NewAuditEvent};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::error::ServiceError;
use crate::pagination::{self, AuditQuery};
use crate::tenant::TenantCtx;
use switchboard_db::repo::audit::{AuditFilter, AuditWriter, Outcome};

/// One audit record as `GET /v1/audit` shows it (no patient: filter with `patient=` instead).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEventOut {
    pub id: String,
    /// RFC 3339.
    pub at: String,
    /// `method_call` or `admin`.
    pub kind: String,
    /// The method id, or the administrative action.
    pub action: String,
    pub api_key_id: Option<String>,
    pub account_id: Option<String>,
    pub install_id: Option<String>,
    pub connector_id: Option<String>,
    /// The HTTP status the caller got.
    pub status: i64,
    /// The problem code of an error.
    pub code: Option<String>,
    /// The EHR's HTTP status, when the call got an answer.
    pub upstream_status: Option<i64>,
    pub duration_ms: Option<i64>,
    pub request_id: Option<String>,
}

/// A page of the audit trail.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditList {
    pub events: Vec<AuditEventOut>,
    /// Null on the last page.
    pub next_cursor: Option<String>,
}

impl From<AuditEvent> for AuditEventOut {
    fn from(r: AuditEvent) -> Self {
        Self {
            id: r.id,
            at: switchboard_core::ms_to_rfc3339(r.at),
            kind: r.kind,
            action: r.action,
            api_key_id: r.api_key_id,
            account_id: r.account_id,
            install_id: r.install_id,
            connector_id: r.connector_id,
            status: r.status,
            code: r.code,
            upstream_status: r.upstream_status,
            duration_ms: r.duration_ms,
            request_id: r.request_id,
        }
    }
}

/// What an administrative change touched (for its audit record).
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub account_id: Option<String>,
    pub install_id: Option<String>,
    pub connector_id: Option<String>,
}

/// Who made an administrative change (for its audit record): ids only, never a key.
#[derive(Debug, Clone, Default)]
pub struct By {
    pub api_key_id: Option<String>,
    pub request_id: Option<String>,
}

/// A time filter: RFC 3339 or epoch milliseconds.
pub fn parse_time(name: &str, v: &str) -> Result<i64, ServiceError> {
    v.parse::<i64>()
        .ok()
        .or_else(|| switchboard_core::rfc3339_to_ms(v))
        .ok_or_else(|| {
            ServiceError::InvalidRequest(format!(
                "{name} must be an RFC 3339 time or epoch milliseconds"
            ))
        })
}

/// Most rows written in one transaction (one INSERT statement: see the repo's chunk size).
pub const BATCH_MAX: usize = 1_000;
/// How long the writer gathers rows after the first one of a batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(200);

enum Msg {
    Record(AuditRecord),
    /// Write everything queued before this, then answer.
    Flush(oneshot::Sender<()>),
    /// Write everything queued before this, answer, and stop.
    Stop(oneshot::Sender<()>),
}

/// The process's audit trail writer. The server spawns [`AuditLog::writer`] (inside its
/// metrics scope); until then records wait in the buffer.
pub struct AuditLog {
    enabled: bool,
    fail_closed: bool,
    tx: mpsc::Sender<Msg>,
    rx: Mutex<Option<mpsc::Receiver<Msg>>>,
    /// Wakes the writer while it gathers a batch: a full batch is waiting, or a flush/stop.
    wake: Arc<Notify>,
    /// Queued records that make a full batch: [`BATCH_MAX`], or half the buffer when smaller.
    wake_at: usize,
    db: Db,
    crypto: Arc<KeyRing>,
    /// Tenants' patient-hash keys, opened once per process, as HMAC states already keyed (a
    /// hash then clones one instead of hashing the key's pads again).
    keys: Mutex<HashMap<String, PatientMac>>,
    retention_ms: i64,
}

impl AuditLog {
    pub fn new(db: Db, crypto: Arc<KeyRing>, settings: &AuditSettings) -> Self {
        let (tx, rx) = mpsc::channel(settings.buffer.max(1));
        Self {
            enabled: settings.enabled,
            fail_closed: settings.fail_closed,
            tx,
            rx: Mutex::new(Some(rx)),
            wake: Arc::new(Notify::new()),
            wake_at: (settings.buffer.max(1) / 2).clamp(1, BATCH_MAX),
            db,
            crypto,
            keys: Mutex::new(HashMap::new()),
            retention_ms: settings.retention_ms(),
        }
    }

    /// Hex HMAC-SHA256 of `patient` under the tenant's audit key (created on first use). A
    /// Patient reference is hashed as its id ([`patient_key`]), so `123`, `Patient/123` and a
    /// write's `subject.reference` of `Patient/123` match the same records.
    pub async fn patient_hash(
        &self,
        tenant_id: &str,
        patient: &str,
    ) -> Result<String, ServiceError> {
        let mac = self.tenant_mac(tenant_id).await?;
        let patient = patient_key(patient).unwrap_or(patient);
        Ok(hex::encode(finish_hmac(mac, patient.as_bytes())))
    }

    async fn tenant_mac(&self, tenant_id: &str) -> Result<PatientMac, ServiceError> {
        if let Some(mac) = self
            .keys
            .lock()
            .ok()
            .and_then(|m| m.get(tenant_id).cloned())
        {
            return Ok(mac);
        }
        let aad = format!("audit_key:{tenant_id}");
        let fresh: [u8; 32] = rand::random();
        let new = switchboard_db::AuditKey {
            tenant_id: tenant_id.to_owned(),
            sealed_key: self.crypto.encrypt(&fresh, &aad),
            created_at: switchboard_core::now_ms(),
        };
        let stored = self
            .db
            .run(move |c| repo::audit::key_or_insert(c, &new))
            .await?;
        let opened = self.crypto.decrypt(&stored.sealed_key, &aad)?;
        let key: [u8; 32] = opened
            .as_slice()
            .try_into()
            .map_err(|_| ServiceError::internal("the tenant's audit key has the wrong size"))?;
        let mac = keyed_hmac(&key);
        if let Ok(mut m) = self.keys.lock() {
            m.insert(tenant_id.to_owned(), mac.clone());
        }
        Ok(mac)
    }

    /// `GET /v1/audit`: one page of the tenant's trail, oldest first, filtered.
    pub async fn list(&self, t: &TenantCtx, q: AuditQuery) -> Result<AuditList, ServiceError> {
        pagination::id_filter("account", q.account.as_ref())?;
        let outcome = match q.outcome.as_deref() {
            None => None,
            Some("ok") => Some(Outcome::Ok),
            Some("error") => Some(Outcome::Error),
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (100..=599).contains(&n) => Some(Outcome::Status(n)),
                _ => {
                    return Err(ServiceError::InvalidRequest(
                        "outcome must be ok, error or an HTTP status".into(),
                    ))
                }
            },
        };
        let from = q
            .from
            .as_deref()
            .map(|v| parse_time("from", v))
            .transpose()?;
        let to = q.to.as_deref().map(|v| parse_time("to", v)).transpose()?;
        let patient_hash = match q.patient.as_deref() {
            Some(p) => Some(self.patient_hash(t.tenant_id(), p).await?),
            None => None,
        };
        let filter = AuditFilter {
            install_id: q.install.clone(),
            account_id: q.account.clone(),
            action: q.method.clone(),
            outcome,
            from,
            to,
            patient_hash,
        };
        let scope = format!(
            "audit:{}:{}:{}:{}:{}:{}:{}",
            filter.install_id.as_deref().unwrap_or(""),
            filter.account_id.as_deref().unwrap_or(""),
            filter.action.as_deref().unwrap_or(""),
            q.outcome.as_deref().unwrap_or(""),
            from.map(|v| v.to_string()).unwrap_or_default(),
            to.map(|v| v.to_string()).unwrap_or_default(),
            filter.patient_hash.as_deref().unwrap_or(""),
        );
        let ring = &self.crypto;
        let start = pagination::start(ring, t.tenant_id(), &scope, &q.page())?;
        let tenant = t.tenant_id().to_owned();
        let page = self
            .db
            .run(move |c| {
                repo::audit::list_page(c, &tenant, &filter, start.after.as_ref(), start.limit)
            })
            .await?;
        Ok(AuditList {
            next_cursor: page
                .next
                .map(|after| pagination::seal(ring, t.tenant_id(), &scope, &after)),
            events: page.rows.into_iter().map(AuditEventOut::from).collect(),
        })
    }

    /// Every tenant's records with `at >= since`, oldest first, one JSON object each (the API's
    /// fields plus `tenant_id`; the `audit export` command). One ordered query read row by row
    /// on the blocking pool ([`repo::audit::export_each`]) feeds a bounded channel, and `line`
    /// runs here as records arrive, so neither side holds more than the channel's 1,024 records.
    pub async fn export(
        &self,
        since: i64,
        mut line: impl FnMut(String),
    ) -> Result<usize, ServiceError> {
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(1_024);
        // The reader stops when the receiving side is gone (`blocking_send` fails).
        let read = self
            .db
            .run(move |c| repo::audit::export_each(c, since, |r| tx.blocking_send(r).is_ok()));
        let write = async {
            let mut n = 0;
            while let Some(r) = rx.recv().await {
                let tenant_id = r.tenant_id.clone();
                let mut v =
                    serde_json::to_value(AuditEventOut::from(r)).map_err(ServiceError::internal)?;
                v["tenant_id"] = serde_json::Value::String(tenant_id);
                line(v.to_string());
                n += 1;
            }
            Ok::<usize, ServiceError>(n)
        };
        let (read, written) = tokio::join!(read, write);
        // A failed write ends the loop and drops the receiver, which ends the read: report the
        // write's error first, as it is the cause.
        let written = written?;
        read?;
        Ok(written)
    }

    /// Deletes the records older than the retention (`audit.retention_days`) as of `now_ms`.
    pub async fn purge(&self, now_ms: i64) -> Result<usize, ServiceError> {
        let before = now_ms.saturating_sub(self.retention_ms);
        Ok(self
            .db
            .run(move |c| repo::audit::purge_before(c, before))
            .await?)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The writer task, to spawn once (later calls return `None`). It ends after
    /// [`AuditLog::shutdown`].
    pub fn writer(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let rx = self.rx.lock().ok()?.take()?;
        Some(write_loop(self.db.clone(), rx, self.wake.clone()))
    }

    /// A fresh record id: unique, and in creation order (`aud_`, the time, 80 random bits;
    /// [`switchboard_core::time_ordered_id`]), so the primary-key index grows at its end. The
    /// trail is ordered by `(at, id)`.
    pub fn new_id() -> String {
        switchboard_core::time_ordered_id("aud", switchboard_core::now_ms())
    }

    /// Queues one record without waiting (its texts copied into one allocation: an
    /// [`AuditRecord`]). A full buffer drops it (counted), or with `audit.fail_closed` refuses
    /// it with a retryable 503.
    pub fn record(&self, event: NewAuditEvent<'_>) -> Result<(), ServiceError> {
        if !self.enabled {
            return Ok(());
        }
        // The writer sets the queue-depth gauge when it takes a batch: no metric lookup here.
        match self.tx.try_send(Msg::Record(AuditRecord::new(&event))) {
            Ok(()) => {
                if self.tx.max_capacity() - self.tx.capacity() >= self.wake_at {
                    self.wake.notify_one();
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) if self.fail_closed => Err(
                ServiceError::Unavailable("the audit trail is busy; retry shortly".into()),
            ),
            Err(_) => {
                switchboard_metrics::audit_dropped();
                tracing::warn!("audit buffer full: a record was dropped");
                Ok(())
            }
        }
    }

    /// Records a successful administrative change (`setup.saved`, `install.created`, ...).
    /// `t` is the caller's key and request; `None` for the OAuth callback (the EHR's redirect
    /// carries no API key).
    pub fn admin(
        &self,
        tenant_id: &str,
        t: Option<&TenantCtx>,
        action: &str,
        status: u16,
        target: Target,
    ) -> Result<(), ServiceError> {
        let by = By {
            api_key_id: t.map(|t| t.key_id().to_owned()),
            request_id: t.and_then(|t| t.request_id().map(str::to_owned)),
        };
        self.admin_by(tenant_id, by, action, status, target)
    }

    /// [`AuditLog::admin`] for a change no authenticated request made: the OAuth callback (its
    /// request id, and the key that started the authorization) or the CLI (neither).
    pub fn admin_by(
        &self,
        tenant_id: &str,
        by: By,
        action: &str,
        status: u16,
        target: Target,
    ) -> Result<(), ServiceError> {
        if !self.enabled {
            return Ok(());
        }
        let id = Self::new_id();
        let now = switchboard_core::now_ms();
        self.record(NewAuditEvent {
            api_key_id: by.api_key_id.as_deref(),
            account_id: target.account_id.as_deref(),
            install_id: target.install_id.as_deref(),
            connector_id: target.connector_id.as_deref(),
            request_id: by.request_id.as_deref(),
            ..NewAuditEvent::admin(&id, tenant_id, now, action, i64::from(status))
        })
    }

    /// A record that could not be built (its patient key was unavailable): an error with
    /// `audit.fail_closed`, else counted as dropped.
    pub fn unrecordable(&self, e: ServiceError) -> Result<(), ServiceError> {
        if self.fail_closed {
            return Err(e);
        }
        switchboard_metrics::audit_dropped();
        tracing::warn!(code = %e.code().code(), "an audit record was dropped");
        Ok(())
    }

    /// Waits until every record queued before this call is written (or failed to write).
    /// Returns at once when the writer is not running.
    pub async fn flush(&self) {
        self.ask(Msg::Flush).await;
    }

    /// Writes what is queued and stops the writer (graceful shutdown).
    pub async fn shutdown(&self) {
        self.ask(Msg::Stop).await;
    }

    async fn ask(&self, msg: fn(oneshot::Sender<()>) -> Msg) {
        if self.rx.lock().map(|rx| rx.is_some()).unwrap_or(true) {
            return; // not started: nobody would answer
        }
        let (done, wait) = oneshot::channel();
        if self.tx.send(msg(done)).await.is_ok() {
            self.wake.notify_one();
            let _ = wait.await;
        }
    }
}

/// Takes batches off the queue and writes them. Idle, it waits for the first record of a
/// batch (one wakeup); then it sleeps until [`BATCH_WINDOW`] has passed, a full batch is
/// queued or a flush/stop arrives (the `wake` notification), and drains what is queued without
/// waiting. Senders never wake it per record.
async fn write_loop(db: Db, mut rx: mpsc::Receiver<Msg>, wake: Arc<Notify>) {
    let mut writer = None;
    let mut batch: Vec<AuditRecord> = Vec::with_capacity(BATCH_MAX);
    // A full batch was written and more was queued: drain again at once.
    let mut backlog = false;
    while let Some(first) = rx.recv().await {
        let mut answer = None;
        let mut stop = false;
        let mut next = Some(first);
        if !backlog && matches!(next, Some(Msg::Record(_))) {
            // Gather: the senders queue without waking this task.
            let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = wake.notified() => {}
            }
        }
        switchboard_metrics::audit_queue_depth(rx.len());
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(e) => batch.push(e),
                Msg::Flush(done) => {
                    answer = Some(done);
                    break;
                }
                Msg::Stop(done) => {
                    answer = Some(done);
                    stop = true;
                    break;
                }
            }
            if batch.len() >= BATCH_MAX {
                break;
            }
            next = rx.try_recv().ok();
        }
        backlog = batch.len() >= BATCH_MAX && !rx.is_empty();
        write(&db, &mut writer, &mut batch).await;
        if let Some(done) = answer {
            let _ = done.send(());
        }
        if stop {
            return;
        }
    }
    write(&db, &mut writer, &mut batch).await;
}

/// Writes the batch, and empties it, on the writer's own connection ([`AuditWriter`], created
/// on first use and again after a panic) on tokio's blocking pool: the writer and the batch's
/// buffer move there and back.
async fn write(db: &Db, writer: &mut Option<AuditWriter>, batch: &mut Vec<AuditRecord>) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len();
    let mut w = writer
        .take()
        .unwrap_or_else(|| AuditWriter::new(db.clone()));
    let mut rows = std::mem::take(batch);
    let done = tokio::task::spawn_blocking(move || {
        let borrowed: Vec<NewAuditEvent<'_>> = rows.iter().map(AuditRecord::as_new).collect();
        let result = w.insert(&borrowed);
        drop(borrowed);
        rows.clear();
        (w, rows, result)
    })
    .await;
    let result = match done {
        Ok((w, rows, result)) => {
            *writer = Some(w);
            *batch = rows;
            result
        }
        Err(e) => {
            tracing::error!(error = %e, "the audit write panicked or was cancelled");
            Err(switchboard_db::DbError::Query(
                "the audit write did not complete".to_owned(),
            ))
        }
    };
    if let Err(e) = result {
        // Counted as dropped: the rows are lost. The error names no row content.
        for _ in 0..n {
            switchboard_metrics::audit_dropped();
        }
        tracing::error!(error = %e, records = n, "writing audit records failed");
    }
}

/// An HMAC-SHA256 state keyed with a tenant's patient-hash key, before any message.
type PatientMac = hmac::Hmac<Sha256>;

fn keyed_hmac(key: &[u8; 32]) -> PatientMac {
    use hmac::Mac;
    PatientMac::new_from_slice(key).expect("HMAC takes a key of any size")
}

/// HMAC-SHA256 (RFC 2104) of `msg`, from a keyed state ([`keyed_hmac`]).
fn finish_hmac(mut mac: PatientMac, msg: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// The patient id a value names: a bare id (`123`) as is; a Patient reference, relative or
/// absolute, possibly versioned (`Patient/123`, `https://ehr/fhir/Patient/123/_history/2`), its
/// id. `None` for a reference to another resource type (`Group/7`).
pub fn patient_key(value: &str) -> Option<&str> {
    if !value.contains('/') {
        return Some(value);
    }
    let path = value.split(['?', '#']).next().unwrap_or(value);
    let segments: Vec<&str> = path.split('/').collect();
    let at = segments.iter().rposition(|s| *s == "Patient")?;
    segments.get(at + 1).copied().filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> AuditEvent {
        AuditEvent {
            id: id.to_owned(),
            tenant_id: "ten_a".into(),
            at: 1,
            kind: "admin".into(),
            action: "setup.saved".into(),
            api_key_id: None,
            account_id: None,
            install_id: None,
            connector_id: None,
            status: 200,
            code: None,
            upstream_status: None,
            duration_ms: None,
            request_id: None,
            patient_hash: None,
        }
    }

    /// A migrated SQLite database in a fresh file under the system temp directory.
    fn db() -> (Db, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "switchboard-audit-{}.db",
            switchboard_core::random_token(8)
        ));
        let db = Db::connect(&format!("sqlite://{}", path.display()), 2).unwrap();
        db.migrate().unwrap();
        (db, path)
    }

    fn log(db: &Db, buffer: usize, fail_closed: bool) -> AuditLog {
        let settings = AuditSettings {
            enabled: true,
            buffer,
            fail_closed,
            retention_days: 1,
        };
        AuditLog::new(db.clone(), Arc::new(KeyRing::generate()), &settings)
    }

    async fn count(db: &Db) -> usize {
        db.run(|c| repo::audit::export_each(c, 0, |_| true))
            .await
            .unwrap()
    }

    /// The export streams more records than its channel holds (1,024), oldest first across
    /// tenants, as one JSON object per record with its tenant.
    #[tokio::test]
    async fn export_streams_every_record_since_in_order() {
        let (db, path) = db();
        let rows: Vec<AuditEvent> = (0..2_500)
            .map(|i| {
                let mut e = event(&format!("aud_{i:05}"));
                e.tenant_id = if i % 2 == 0 { "ten_a" } else { "ten_b" }.into();
                // Two records per millisecond, written newest first.
                e.at = 10_000 - i / 2;
                e
            })
            .collect();
        db.run(move |c| {
            let rows: Vec<_> = rows.iter().map(AuditEvent::as_new).collect();
            repo::audit::insert_batch(c, &rows)
        })
        .await
        .unwrap();
        let audit = log(&db, 16, false);
        let mut lines = Vec::new();
        let n = audit
            .export(10_000 - 1_000, |l| lines.push(l))
            .await
            .unwrap();
        // `at` from 9,000 to 10,000: i from 0 to 2,001.
        assert_eq!(n, 2_002);
        assert_eq!(lines.len(), n);
        // `at` is RFC 3339 in one fixed format, so its text sorts as its time does.
        let keys: Vec<(String, String, String)> = lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["at"].as_str().unwrap().to_owned(),
                    v["id"].as_str().unwrap().to_owned(),
                    v["tenant_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "oldest first, then by id");
        assert_eq!(keys[0].0, switchboard_core::ms_to_rfc3339(9_000));
        assert!(keys.iter().any(|k| k.2 == "ten_a") && keys.iter().any(|k| k.2 == "ten_b"));
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn a_full_buffer_drops_or_refuses_and_the_call_decides() {
        let (db, path) = db();
        // Fail open: the second record does not fit (no writer yet) and is dropped, not an error.
        let open = log(&db, 1, false);
        open.record(event("a").as_new()).unwrap();
        open.record(event("b").as_new()).unwrap();
        let writer = tokio::spawn(open.writer().unwrap());
        open.shutdown().await;
        writer.await.unwrap();
        assert_eq!(count(&db).await, 1);

        // Fail closed: the same overflow is a retryable 503.
        let closed = log(&db, 1, true);
        closed.record(event("c").as_new()).unwrap();
        let err = closed.record(event("d").as_new()).unwrap_err();
        assert_eq!(err.code(), switchboard_core::ErrorCode::ServiceUnavailable);
        let writer = tokio::spawn(closed.writer().unwrap());
        closed.flush().await;
        assert_eq!(count(&db).await, 2, "flush waits for the write");
        closed.record(event("e").as_new()).unwrap();
        closed.shutdown().await;
        writer.await.unwrap();
        assert_eq!(count(&db).await, 3, "shutdown drains the queue");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        // Key "Jefe": HMAC zero-pads keys to the block size, so 28 zero bytes change nothing.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(finish_hmac(
                keyed_hmac(&key),
                b"what do ya want for nothing?"
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn patient_key_takes_the_id_of_patient_references_only() {
        assert_eq!(patient_key("123"), Some("123"));
        assert_eq!(patient_key("Patient/123"), Some("123"));
        assert_eq!(
            patient_key("https://ehr.example/fhir/R4/Patient/abc-1/_history/2"),
            Some("abc-1")
        );
        assert_eq!(patient_key("Group/7"), None);
        assert_eq!(patient_key("Patient/"), None);
    }
}
