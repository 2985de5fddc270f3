//! Install-status webhooks (Standard Webhooks): a tenant's endpoints, the outbox events the
//! services write in the transaction of each state change ([`Outbox`]), and the [`Dispatcher`]
//! that any replica runs to deliver them: one delivery in flight per endpoint (a lease on the
//! endpoint row), in event order, signed `v1,` HMAC-SHA256 over `id.timestamp.body`, retried
//! on an exponential schedule decided on the injected [`Clock`].

use crate::audit::{AuditLog, By, Target};
use crate::clock::Clock;
use crate::error::ServiceError;
use crate::pagination::{self, PageIn};
use crate::tenant::TenantCtx;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_config::WebhookSettings;
use switchboard_core::{ms_to_rfc3339, ErrorCode, IdKind};
use switchboard_crypto::KeyRing;
use switchboard_db::repo::webhooks as repo;
use switchboard_db::{Db, NewWebhookEvent, WebhookDelivery, WebhookEndpoint, WebhookEvent};
use switchboard_metrics::WebhookOutcome;
use switchboard_outbound::{Outbound, RetryPolicy};
use tokio::sync::Notify;
use url::Url;

/// The event types, as sent in `type` and named in endpoint filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    InstallAuthorized,
    InstallNeedsReauthorization,
    InstallRefreshFailing,
    InstallRecovered,
    InstallDeleted,
    SetupChanged,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::InstallAuthorized,
        EventType::InstallNeedsReauthorization,
        EventType::InstallRefreshFailing,
        EventType::InstallRecovered,
        EventType::InstallDeleted,
        EventType::SetupChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::InstallAuthorized => "install.authorized",
            EventType::InstallNeedsReauthorization => "install.needs_reauthorization",
            EventType::InstallRefreshFailing => "install.refresh_failing",
            EventType::InstallRecovered => "install.recovered",
            EventType::InstallDeleted => "install.deleted",
            EventType::SetupChanged => "setup.changed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The install an event is about: ids and status only (never a token or patient data).
#[derive(Debug, Clone)]
pub struct InstallRef<'a> {
    pub tenant_id: &'a str,
    pub account_id: &'a str,
    pub install_id: &'a str,
    pub connector_id: &'a str,
    pub status: &'a str,
}

impl<'a> From<&'a switchboard_db::Install> for InstallRef<'a> {
    fn from(row: &'a switchboard_db::Install) -> Self {
        InstallRef {
            tenant_id: &row.tenant_id,
            account_id: &row.account_id,
            install_id: &row.id,
            connector_id: &row.connector_id,
            status: row.status.as_str(),
        }
    }
}

/// Makes the outbox events the services write (with `switchboard_db::repo::webhooks::emit`)
/// inside the transaction of their state change, and wakes this process's dispatcher after
/// the commit. Event time is the injected clock's.
pub struct Outbox {
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    /// `install.refresh_failing` after this many consecutive transient failures.
    pub refresh_failing_after: u32,
}

impl Outbox {
    pub fn new(clock: Arc<dyn Clock>, refresh_failing_after: u32) -> Self {
        Self {
            clock,
            wake: Arc::new(Notify::new()),
            refresh_failing_after,
        }
    }

    fn event(
        &self,
        tenant_id: &str,
        kind: EventType,
        install_id: Option<&str>,
        data: Value,
    ) -> NewWebhookEvent {
        let now = self.clock.now_ms();
        let payload = json!({
            "type": kind.as_str(),
            "timestamp": ms_to_rfc3339(now),
            "data": data,
        });
        NewWebhookEvent {
            id: IdKind::Message.generate(),
            tenant_id: tenant_id.to_owned(),
            event_type: kind.as_str().to_owned(),
            install_id: install_id.map(str::to_owned),
            payload: payload.to_string(),
            created_at: now,
        }
    }

    /// An `install.*` event: `data` = `{install, account, connector, status}`.
    pub fn install_event(&self, kind: EventType, install: InstallRef<'_>) -> NewWebhookEvent {
        let data = json!({
            "install": install.install_id,
            "account": install.account_id,
            "connector": install.connector_id,
            "status": install.status,
        });
        self.event(install.tenant_id, kind, Some(install.install_id), data)
    }

    /// `setup.changed`: `data` = `{connector, change}` (`saved` or `deleted`).
    pub fn setup_event(
        &self,
        tenant_id: &str,
        connector_id: &str,
        change: &str,
    ) -> NewWebhookEvent {
        let data = json!({"connector": connector_id, "change": change});
        self.event(tenant_id, EventType::SetupChanged, None, data)
    }

    /// Call after a transaction that wrote events committed: this process's dispatcher looks
    /// at the queue now instead of at its next poll.
    pub fn committed(&self) {
        self.wake.notify_one();
    }
}

// ---------------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://console.example/hooks/switchboard", "events": ["install.needs_reauthorization"]}))]
pub struct WebhookIn {
    /// Where events are POSTed: https to a public address (the outbound policy applies).
    pub url: String,
    /// Event types to receive; absent or empty: every type.
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookOut {
    pub id: String,
    pub url: String,
    /// The event filter; empty: every type.
    pub events: Vec<String>,
    pub created_at: String,
    /// False after `PATCH {"enabled": false}`, or once every attempt failed for
    /// `webhooks.disable_after_failing_secs`: no delivery is queued for new events and the
    /// pending ones wait until it is enabled again.
    pub enabled: bool,
    /// When it was disabled (null while enabled).
    pub disabled_at: Option<String>,
    /// Why it is disabled: `manual` (PATCH) or `failing` (by the dispatcher, after its
    /// attempts all failed for `webhooks.disable_after_failing_secs`); null while enabled.
    #[schema(example = "failing")]
    pub disabled_reason: Option<String>,
    /// The first failed attempt since its last successful delivery (null: not failing).
    pub failing_since: Option<String>,
}

/// `PATCH /v1/webhooks/{id}`: the fields to change; absent ones stay.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"enabled": false}))]
pub struct WebhookPatch {
    /// False: stop delivering (events emitted while disabled are not queued for this
    /// endpoint; its pending deliveries are kept). True: resume, the pending deliveries due
    /// at once with a new retry window.
    pub enabled: Option<bool>,
    /// A new event filter (empty: every type); it applies to events emitted from now on.
    pub events: Option<Vec<String>>,
    /// A new URL (the outbound policy applies); pending deliveries go to it.
    pub url: Option<String>,
}

/// `POST /v1/webhooks`: the endpoint and its signing secret, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookCreated {
    #[serde(flatten)]
    pub webhook: WebhookOut,
    /// `whsec_` + base64 of 32 random bytes: the Standard Webhooks signing secret.
    pub secret: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookOut>,
    pub next_cursor: Option<String>,
}

/// One event as an endpoint gets it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventOut {
    /// `msg_…`, sent as `webhook-id`.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created_at: String,
    /// The JSON body delivered.
    #[schema(value_type = Object)]
    pub payload: Value,
}

/// The delivery of one event to one endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryOut {
    pub event: EventOut,
    /// `pending`, `delivered` or `failed` (retries exhausted).
    pub state: String,
    pub attempts: i64,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    /// The receiver's HTTP status at the last attempt (none: no answer).
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryOut>,
    pub next_cursor: Option<String>,
}

fn webhook_out(row: &WebhookEndpoint) -> WebhookOut {
    WebhookOut {
        id: row.id.clone(),
        url: row.url.clone(),
        events: row.events.split_whitespace().map(str::to_owned).collect(),
        created_at: ms_to_rfc3339(row.created_at),
        enabled: row.disabled_at.is_none(),
        disabled_at: row.disabled_at.map(ms_to_rfc3339),
        disabled_reason: row.disabled_at.map(|_| {
            row.disabled_reason
                .clone()
                .unwrap_or_else(|| repo::DISABLED_MANUAL.into())
        }),
        failing_since: row.failing_since.map(ms_to_rfc3339),
    }
}

/// The event filter as stored (space-separated, each type once): 422 for an unknown type.
fn event_filter(names: &[String]) -> Result<String, ServiceError> {
    let mut events: Vec<&str> = Vec::new();
    for name in names {
        let Some(kind) = EventType::parse(name) else {
            return Err(ServiceError::InvalidRequest(format!(
                "unknown event type; known: {}",
                EventType::ALL.map(EventType::as_str).join(", ")
            )));
        };
        if !events.contains(&kind.as_str()) {
            events.push(kind.as_str());
        }
    }
    Ok(events.join(" "))
}

fn delivery_out((d, e): (WebhookDelivery, WebhookEvent)) -> DeliveryOut {
    DeliveryOut {
        event: EventOut {
            id: e.id,
            event_type: e.event_type,
            created_at: ms_to_rfc3339(e.created_at),
            payload: serde_json::from_str(&e.payload).unwrap_or(Value::Null),
        },
        next_attempt_at: (d.state == repo::PENDING).then(|| ms_to_rfc3339(d.next_attempt_at)),
        state: d.state,
        attempts: d.attempts,
        last_attempt_at: d.last_attempt_at.map(ms_to_rfc3339),
        last_status: d.last_status,
        last_error: d.last_error,
        delivered_at: d.delivered_at.map(ms_to_rfc3339),
    }
}

/// The AAD an endpoint's signing secret is sealed under.
pub fn secret_aad(endpoint_id: &str) -> String {
    format!("webhook:{endpoint_id}:secret")
}

/// A tenant's webhook endpoints and their delivery history.
pub struct WebhookService {
    pub(crate) db: Db,
    pub(crate) crypto: Arc<KeyRing>,
    pub(crate) outbound: Outbound,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) audit: Arc<AuditLog>,
}

/// The audit action of a disable (`PATCH`, or the dispatcher's for a failing endpoint) or an
/// enable of the endpoint `id`.
fn enabled_action(enabled: bool, id: &str) -> String {
    let change = if enabled { "enabled" } else { "disabled" };
    format!("webhook.{change}:{id}")
}

impl WebhookService {
    /// Registers an endpoint. The URL must pass the outbound policy (422
    /// `upstream_not_allowed`), and every event type must be known. Audited as
    /// `webhook.created:{id}` (never the URL or the secret).
    pub async fn create_webhook(
        &self,
        t: &TenantCtx,
        input: WebhookIn,
    ) -> Result<WebhookCreated, ServiceError> {
        let url = self.checked_url(&input.url)?;
        let events = event_filter(&input.events)?;
        let id = IdKind::Webhook.generate();
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut key);
        let secret = format!("whsec_{}", STANDARD.encode(key));
        let row = WebhookEndpoint {
            secret: self
                .crypto
                .encrypt(secret.as_bytes(), secret_aad(&id).as_bytes()),
            id,
            tenant_id: t.tenant_id.clone(),
            url: url.to_string(),
            events,
            created_at: self.outbox.clock.now_ms(),
            disabled_at: None,
            lease_owner: None,
            lease_until: None,
            failing_since: None,
            disabled_reason: None,
        };
        let row = self
            .db
            .run(move |conn| repo::insert_endpoint(conn, &row))
            .await?;
        self.audit.admin(
            &t.tenant_id,
            Some(t),
            &format!("webhook.created:{}", row.id),
            201,
            Target::default(),
        )?;
        Ok(WebhookCreated {
            webhook: webhook_out(&row),
            secret,
        })
    }

    /// A webhook URL: absolute http(s) (422 otherwise) passing the outbound policy (422
    /// `upstream_not_allowed`).
    fn checked_url(&self, raw: &str) -> Result<Url, ServiceError> {
        let url = Url::parse(raw.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                ServiceError::InvalidRequest("url must be an absolute https URL".into())
            })?;
        self.outbound
            .check_url(&url)
            .map_err(|e| ServiceError::Upstream {
                code: ErrorCode::UpstreamNotAllowed,
                detail: format!("webhook url: {e}"),
                retry_after_secs: None,
                issues: vec![],
            })?;
        Ok(url)
    }

    /// `PATCH /v1/webhooks/{id}`: enables or disables the endpoint, or changes its URL (checked
    /// as at creation) or event filter. 404 if the tenant has no such endpoint. `enabled` is
    /// audited (`webhook.enabled:{id}` or `webhook.disabled:{id}`), a new URL or event filter
    /// as `webhook.updated:{id}` (never the URL itself).
    pub async fn patch_webhook(
        &self,
        t: &TenantCtx,
        id: &str,
        input: WebhookPatch,
    ) -> Result<WebhookOut, ServiceError> {
        let change = repo::EndpointChange {
            url: match &input.url {
                Some(raw) => Some(self.checked_url(raw)?.to_string()),
                None => None,
            },
            events: input.events.as_deref().map(event_filter).transpose()?,
            enabled: input.enabled,
        };
        let (tenant, id) = (t.tenant_id.clone(), id.to_owned());
        let now = self.outbox.clock.now_ms();
        let row = self
            .db
            .run(move |conn| repo::update_endpoint(conn, &tenant, &id, &change, now))
            .await?
            .ok_or_else(|| ServiceError::NotFound("webhook not found".into()))?;
        if input.enabled == Some(true) {
            // Its pending deliveries are due now.
            self.outbox.committed();
        }
        if let Some(enabled) = input.enabled {
            let action = enabled_action(enabled, &row.id);
            self.audit
                .admin(&t.tenant_id, Some(t), &action, 200, Target::default())?;
        }
        if input.url.is_some() || input.events.is_some() {
            let action = format!("webhook.updated:{}", row.id);
            self.audit
                .admin(&t.tenant_id, Some(t), &action, 200, Target::default())?;
        }
        Ok(webhook_out(&row))
    }

    async fn find(&self, t: &TenantCtx, id: &str) -> Result<WebhookEndpoint, ServiceError> {
        let (tenant, id) = (t.tenant_id.clone(), id.to_owned());
        self.db
            .run(move |conn| repo::find_endpoint(conn, &tenant, &id))
            .await?
            .ok_or_else(|| ServiceError::NotFound("webhook not found".into()))
    }

    pub async fn get_webhook(&self, t: &TenantCtx, id: &str) -> Result<WebhookOut, ServiceError> {
        Ok(webhook_out(&self.find(t, id).await?))
    }

    pub async fn list_webhooks(
        &self,
        t: &TenantCtx,
        page: PageIn,
    ) -> Result<WebhookList, ServiceError> {
        const SCOPE: &str = "webhooks";
        let ring = &self.crypto;
        let start = pagination::start(ring, &t.tenant_id, SCOPE, &page)?;
        let tenant = t.tenant_id.clone();
        let page = self
            .db
            .run(move |conn| repo::list_endpoints(conn, &tenant, start.after.as_ref(), start.limit))
            .await?;
        Ok(WebhookList {
            next_cursor: page
                .next
                .map(|after| pagination::seal(ring, &t.tenant_id, SCOPE, &after)),
            webhooks: page.rows.iter().map(webhook_out).collect(),
        })
    }

    /// Deletes the endpoint and its pending and past deliveries. Audited as
    /// `webhook.deleted:{id}`.
    pub async fn delete_webhook(&self, t: &TenantCtx, id: &str) -> Result<(), ServiceError> {
        let (tenant, id) = (t.tenant_id.clone(), id.to_owned());
        let action = format!("webhook.deleted:{id}");
        let deleted = self
            .db
            .run(move |conn| {
                diesel::Connection::transaction(conn, |c| repo::delete_endpoint(c, &tenant, &id))
            })
            .await?;
        if deleted {
            self.audit
                .admin(&t.tenant_id, Some(t), &action, 204, Target::default())
        } else {
            Err(ServiceError::NotFound("webhook not found".into()))
        }
    }

    /// One page of the endpoint's deliveries in event order.
    pub async fn list_deliveries(
        &self,
        t: &TenantCtx,
        id: &str,
        page: PageIn,
    ) -> Result<DeliveryList, ServiceError> {
        let endpoint = self.find(t, id).await?;
        let scope = format!("webhook_deliveries:{}", endpoint.id);
        let ring = &self.crypto;
        let start = pagination::start(ring, &t.tenant_id, &scope, &page)?;
        let tenant = t.tenant_id.clone();
        let page = self
            .db
            .run(move |conn| {
                repo::list_deliveries(
                    conn,
                    &tenant,
                    &endpoint.id,
                    start.after.as_ref(),
                    start.limit,
                )
            })
            .await?;
        Ok(DeliveryList {
            next_cursor: page
                .next
                .map(|after| pagination::seal(ring, &t.tenant_id, &scope, &after)),
            deliveries: page.rows.into_iter().map(delivery_out).collect(),
        })
    }

    /// Queues the event's delivery to the endpoint again, due now, with a new retry window
    /// (whatever its state). 404 if the tenant's endpoint never had that event.
    pub async fn replay(
        &self,
        t: &TenantCtx,
        id: &str,
        event_id: &str,
    ) -> Result<DeliveryOut, ServiceError> {
        let (tenant, id, event) = (t.tenant_id.clone(), id.to_owned(), event_id.to_owned());
        let now = self.outbox.clock.now_ms();
        let replayed = self
            .db
            .run(move |conn| repo::replay(conn, &tenant, &id, &event, now))
            .await?
            .ok_or_else(|| {
                ServiceError::NotFound("this webhook has no delivery of that event".into())
            })?;
        self.outbox.committed();
        Ok(delivery_out(replayed))
    }
}

// ---------------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------------

/// The Standard Webhooks signature header value: `v1,` + base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` keyed with the base64-decoded part of `whsec_…`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, ServiceError> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| ServiceError::internal("webhook secret is not base64"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(ServiceError::internal)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// Delivers the outbox: every replica may run one; they share the queue through the
/// per-endpoint lease.
pub struct Dispatcher {
    db: Db,
    crypto: Arc<KeyRing>,
    outbound: Outbound,
    outbox: Arc<Outbox>,
    /// Records the disable of a failing endpoint.
    audit: Arc<AuditLog>,
    cfg: WebhookSettings,
    /// This process as a lease owner; new on every start.
    owner: String,
    /// Counts completed passes, so a test can wait for passes instead of time.
    passes: tokio::sync::watch::Sender<u64>,
    /// The queue depth last recorded.
    depth: std::sync::atomic::AtomicI64,
}

/// Deliveries one endpoint gets per claim before its lease is handed back (fairness).
const BATCH_PER_CLAIM: usize = 200;
/// Endpoints looked at per pass.
const ENDPOINTS_PER_PASS: i64 = 256;

impl Dispatcher {
    pub fn new(
        db: Db,
        crypto: Arc<KeyRing>,
        outbound: Outbound,
        outbox: Arc<Outbox>,
        audit: Arc<AuditLog>,
        cfg: WebhookSettings,
    ) -> Self {
        Self {
            db,
            crypto,
            outbound,
            outbox,
            audit,
            cfg,
            owner: format!("whd_{}", switchboard_core::random_token(12)),
            passes: tokio::sync::watch::Sender::new(0),
            depth: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Applies `webhooks.retention_days`: deletes the events written before now (the injected
    /// clock) minus the retention whose deliveries are all delivered or failed, with their
    /// delivery rows; an event with a pending delivery is kept. Returns the events deleted.
    /// The server runs it hourly.
    pub async fn purge(&self) -> Result<usize, ServiceError> {
        let before = self
            .outbox
            .clock
            .now_ms()
            .saturating_sub(self.cfg.retention_ms());
        let mut total = 0;
        loop {
            let n = self
                .db
                .run(move |conn| repo::purge_finished(conn, before))
                .await?;
            total += n;
            if n < repo::PURGE_BATCH as usize {
                return Ok(total);
            }
        }
    }

    /// The number of completed [`Dispatcher::run_once`] passes, changing after each.
    pub fn passes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.passes.subscribe()
    }

    /// Runs until the task is dropped: a pass, then (if it attempted nothing) a wait for an
    /// event written in this process or the poll interval.
    pub async fn run(self: Arc<Self>) {
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        loop {
            let attempted = match self.run_once().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(code = %e.code(), "webhook dispatch pass failed");
                    0
                }
            };
            if attempted == 0 {
                tokio::select! {
                    _ = self.outbox.wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }

    /// One pass: serves every endpoint with a due delivery and a free lease (up to
    /// `concurrency` at once). Returns the attempts made.
    pub async fn run_once(self: &Arc<Self>) -> Result<usize, ServiceError> {
        let now = self.outbox.clock.now_ms();
        let due = self
            .db
            .run(move |conn| repo::due_endpoints(conn, now, ENDPOINTS_PER_PASS))
            .await?;
        let limit = Arc::new(tokio::sync::Semaphore::new(self.cfg.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for endpoint in due {
            let permit = limit
                .clone()
                .acquire_owned()
                .await
                .map_err(ServiceError::internal)?;
            let me = self.clone();
            tasks.spawn(async move {
                let _permit = permit;
                me.serve_endpoint(&endpoint).await
            });
        }
        let mut attempted = 0;
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(n)) => attempted += n,
                Ok(Err(e)) => tracing::warn!(code = %e.code(), "webhook endpoint pass failed"),
                Err(e) => tracing::error!(error = %e, "webhook delivery task failed"),
            }
        }
        let depth = self.db.run(repo::pending_count).await?;
        // Recorded when it changes: the series appears once something was queued.
        if self.depth.swap(depth, std::sync::atomic::Ordering::Relaxed) != depth {
            switchboard_metrics::webhook_queue_depth(depth);
        }
        self.passes.send_modify(|p| *p += 1);
        Ok(attempted)
    }

    /// Takes the endpoint's lease (never a disabled endpoint's) and sends its due deliveries in
    /// order, one at a time, until one fails (the rest wait behind it: order per install
    /// holds), none is due, or the endpoint is disabled.
    async fn serve_endpoint(&self, endpoint_id: &str) -> Result<usize, ServiceError> {
        let ttl = self.cfg.lease_ttl_ms as i64;
        let (id, owner) = (endpoint_id.to_owned(), self.owner.clone());
        let now = self.outbox.clock.now_ms();
        let endpoint = self
            .db
            .run(move |conn| {
                if !repo::claim_endpoint(conn, &id, &owner, now, ttl)? {
                    return Ok(None);
                }
                repo::find_endpoint_by_id(conn, &id)
            })
            .await?;
        let Some(endpoint) = endpoint else {
            return Ok(0);
        };
        let result = self.deliver_queue(&endpoint).await;
        let (id, owner) = (endpoint.id.clone(), self.owner.clone());
        if let Err(e) = self
            .db
            .run(move |conn| repo::release_endpoint(conn, &id, &owner))
            .await
        {
            tracing::warn!(webhook = %endpoint.id, error = %e, "could not release the webhook lease; it expires by itself");
        }
        result
    }

    /// Sends the endpoint's due deliveries in order under its lease. Each send is preceded by
    /// [`repo::head`], which requires the endpoint enabled and the lease ours: a disable
    /// committed before it stops the queue (an attempt already sent may finish).
    async fn deliver_queue(&self, endpoint: &WebhookEndpoint) -> Result<usize, ServiceError> {
        let secret = self
            .crypto
            .decrypt(&endpoint.secret, secret_aad(&endpoint.id).as_bytes())?;
        let secret = String::from_utf8(secret).map_err(ServiceError::internal)?;
        let url = Url::parse(&endpoint.url).map_err(ServiceError::internal)?;
        let ttl = self.cfg.lease_ttl_ms as i64;
        let mut attempted = 0;
        while attempted < BATCH_PER_CLAIM {
            let (id, owner) = (endpoint.id.clone(), self.owner.clone());
            let now = self.outbox.clock.now_ms();
            let Some((delivery, event)) = self
                .db
                .run(move |conn| repo::head(conn, &id, &owner, now))
                .await?
            else {
                break;
            };
            let started = Instant::now();
            let sent = self.send(&url, &secret, &event).await;
            let now = self.outbox.clock.now_ms();
            let (attempt, outcome) = self.schedule(&delivery, now, sent);
            let (id, owner, seq) = (endpoint.id.clone(), self.owner.clone(), delivery.event_seq);
            let record = attempt.clone();
            let disable_failing_before = self
                .cfg
                .disable_after_failing_ms()
                .map(|period| now.saturating_sub(period));
            let recorded = self
                .db
                .run(move |conn| {
                    repo::record_attempt(
                        conn,
                        &id,
                        seq,
                        &owner,
                        now + ttl,
                        &record,
                        disable_failing_before,
                    )
                })
                .await?;
            attempted += 1;
            switchboard_metrics::webhook_delivery(outcome, started.elapsed());
            match recorded {
                repo::Recorded::Written => {}
                repo::Recorded::LeaseLost => {
                    tracing::warn!(webhook = %endpoint.id, "webhook lease lost; another dispatcher continues");
                    break;
                }
                repo::Recorded::Disabled => {
                    tracing::warn!(
                        webhook = %endpoint.id,
                        failing_for_secs = self.cfg.disable_after_failing_secs,
                        "webhook endpoint disabled: every attempt failed for the configured period; its pending deliveries wait until it is enabled"
                    );
                    // No request made this change: no key, no request id.
                    let action = enabled_action(false, &endpoint.id);
                    let by = By::default();
                    if let Err(e) = self.audit.admin_by(
                        &endpoint.tenant_id,
                        by,
                        &action,
                        200,
                        Target::default(),
                    ) {
                        tracing::warn!(webhook = %endpoint.id, code = %e.code(), "the webhook endpoint's disable was not audited");
                    }
                    break;
                }
            }
            if outcome != WebhookOutcome::Delivered {
                if outcome == WebhookOutcome::Failed {
                    tracing::warn!(webhook = %endpoint.id, event = %event.id, "webhook delivery failed for good (retry window over)");
                    continue;
                }
                break;
            }
        }
        Ok(attempted)
    }

    /// POSTs the event with the Standard Webhooks headers. Ok(status) when the receiver
    /// answered, Err(why) when it did not (timeout, connection, policy).
    async fn send(&self, url: &Url, secret: &str, event: &WebhookEvent) -> Result<u16, String> {
        // The signature's timestamp is the wall clock: receivers compare it with theirs.
        let timestamp = switchboard_core::now_ms() / 1000;
        let body = event.payload.clone().into_bytes();
        let signature = sign(secret, &event.id, timestamp, &body).map_err(|e| e.to_string())?;
        let mut req = self
            .outbound
            .client_for(url)
            .map_err(|e| e.to_string())?
            .post(url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .build()
            .map_err(|_| "could not build the request".to_owned())?;
        *req.timeout_mut() = Some(Duration::from_millis(self.cfg.timeout_ms));
        match self.outbound.send(req, RetryPolicy::Never).await {
            Ok(resp) => Ok(resp.status),
            Err(e) => Err(e.to_string()),
        }
    }

    /// What an attempt leads to: delivered on 2xx; otherwise the next attempt after
    /// `retry_initial_secs * 2^(attempts-1)` (capped at `retry_max_interval_secs`), or failed
    /// once `retry_for_secs` have passed since the delivery's retry window opened.
    fn schedule(
        &self,
        delivery: &WebhookDelivery,
        now: i64,
        sent: Result<u16, String>,
    ) -> (repo::Attempt, WebhookOutcome) {
        let (status, error) = match sent {
            Ok(s) if (200..300).contains(&s) => {
                let attempt = repo::Attempt {
                    at: now,
                    state: repo::DELIVERED,
                    next_attempt_at: now,
                    status: Some(i64::from(s)),
                    error: None,
                };
                return (attempt, WebhookOutcome::Delivered);
            }
            Ok(s) => (Some(i64::from(s)), format!("receiver answered {s}")),
            Err(why) => (None, why),
        };
        let error: String = error.chars().take(300).collect();
        let window_ms = (self.cfg.retry_for_secs as i64).saturating_mul(1000);
        if now.saturating_sub(delivery.retry_from) >= window_ms {
            let attempt = repo::Attempt {
                at: now,
                state: repo::FAILED,
                next_attempt_at: now,
                status,
                error: Some(error),
            };
            return (attempt, WebhookOutcome::Failed);
        }
        let n = delivery.attempts.clamp(0, 30) as u32;
        let delay_secs = self
            .cfg
            .retry_initial_secs
            .saturating_mul(1u64 << n.min(30))
            .min(self.cfg.retry_max_interval_secs);
        let attempt = repo::Attempt {
            at: now,
            state: repo::PENDING,
            next_attempt_at: now.saturating_add((delay_secs as i64).saturating_mul(1000)),
            status,
            error: Some(error),
        };
        (attempt, WebhookOutcome::Retrying)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (and of its reference libraries).
    #[test]
    fn signature_matches_the_specification_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, id, 1614265330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn event_types_parse_their_own_names_only() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("install.*"), None);
    }
}
