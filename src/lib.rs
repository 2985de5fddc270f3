//! The `switchboard` binary's library half: the CLI, `Application::build` (used by `main` and
//! by the integration tests alike), telemetry, the allocator's thresholds, the background token
//! refresher, the webhook dispatcher and the Bulk Data job poller.

pub mod cli;
pub mod malloc;
pub mod telemetry;

use actix_web::{App, HttpServer};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use switchboard_api::Metrics;
use switchboard_config::Settings;
use switchboard_db::Db;
use switchboard_service::{Clock, Services, SystemClock};

/// A built, bound, not yet running server.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    services: Services,
    metrics: Metrics,
    /// The listener of `metrics.bind` (its port and server), when configured.
    metrics_server: Option<(u16, actix_web::dev::Server)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Startup(#[from] switchboard_service::StartupError),
    #[error("migrations: {0}")]
    Migrate(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

impl Application {
    /// Connects and migrates the database, loads the key ring and connectors, binds
    /// `server.bind` (port 0 picks a free port) and builds the HTTP server.
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        let addr = settings.server.bind.clone();
        let listener = TcpListener::bind(&addr).map_err(|source| AppError::Bind {
            addr: addr.clone(),
            source,
        })?;
        Self::build_with_listener(settings, listener).await
    }

    /// Like [`Application::build`] on an already bound listener (tests bind port 0 first so
    /// they know `server.public_url` before the server is built).
    pub async fn build_with_listener(
        settings: Settings,
        listener: TcpListener,
    ) -> Result<Self, AppError> {
        Self::build_with_clock(settings, listener, Arc::new(SystemClock)).await
    }

    /// Like [`Application::build_with_listener`] with the clock of the token lifecycle (expiry,
    /// refresh lease, backoff): tests pass a `ManualClock` to move time without sleeping.
    pub async fn build_with_clock(
        settings: Settings,
        listener: TcpListener,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AppError> {
        let addr = settings.server.bind.clone();
        let db = Db::connect(&settings.database.url, settings.database.pool_size)
            .map_err(switchboard_service::StartupError::from)?;
        let services = Services::build_with_clock(settings, db, clock)?;
        services
            .migrate()
            .await
            .map_err(|e| AppError::Migrate(e.to_string()))?;
        // Refuses a ring lacking a key id the database uses (naming it).
        services.check_key_ring().await?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let workers = match services.settings().server.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let shutdown_grace_secs = services.settings().server.shutdown_grace_secs;
        let blocking_threads = (services.settings().database.pool_size as usize).max(4);
        let metrics_settings = &services.settings().metrics;
        let metrics = Metrics::new(
            metrics_settings.required_token(),
            metrics_settings.separate_bind().is_some(),
        );
        // Detached token refreshes run on this (the main) runtime, whose life spans the HTTP
        // workers', and record into this application's metrics.
        let runtime = tokio::runtime::Handle::current();
        let refresh_metrics = metrics.clone();
        services.tokens.set_spawner(Arc::new(move |task| {
            runtime.spawn(refresh_metrics.in_scope(task));
        }));
        // The instance row exists before the first lease this process takes.
        if let Err(e) = services.tokens.heartbeat(false).await {
            tracing::warn!(code = %e.code(), "could not write the first instance heartbeat");
        }
        let metrics_server = match metrics_settings.separate_bind() {
            Some(bind) => Some(Self::metrics_server(
                bind,
                services.clone(),
                metrics.clone(),
            )?),
            None => None,
        };
        let svc = services.clone();
        let app_metrics = metrics.clone();
        let server = HttpServer::new(move || {
            let metrics = app_metrics.clone();
            let recorder = app_metrics.clone();
            App::new()
                .wrap_fn(move |req, srv| switchboard_api::observe(&recorder, req, srv))
                .configure(|cfg| switchboard_api::configure(cfg, svc.clone(), metrics.clone()))
        })
        .workers(workers)
        // A worker's blocking pool runs its database calls (`Db::run`), which can never use
        // more connections than the pool has: threads past that only wait for one (and each
        // costs its stack and malloc arena). actix's default is 512 / workers threads each.
        .worker_max_blocking_threads(blocking_threads)
        .shutdown_timeout(shutdown_grace_secs)
        .listen(listener)
        .map_err(|source| AppError::Bind { addr, source })?
        .run();
        Ok(Self {
            port,
            server,
            services,
            metrics,
            metrics_server,
        })
    }

    /// The listener of `metrics.bind`: `/metrics` only, one worker, same registry.
    fn metrics_server(
        bind: &str,
        services: Services,
        metrics: Metrics,
    ) -> Result<(u16, actix_web::dev::Server), AppError> {
        let bind_err = |source| AppError::Bind {
            addr: bind.to_owned(),
            source,
        };
        let listener = TcpListener::bind(bind).map_err(bind_err)?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let recorder = metrics.clone();
        let server = HttpServer::new(move || {
            let (services, metrics, recorder) =
                (services.clone(), metrics.clone(), recorder.clone());
            App::new()
                .wrap_fn(move |req, srv| switchboard_api::observe(&recorder, req, srv))
                .configure(|cfg| {
                    switchboard_api::configure_metrics_listener(cfg, services, metrics)
                })
        })
        .workers(1)
        .shutdown_timeout(1)
        .listen(listener)
        .map_err(bind_err)?
        .run();
        Ok((port, server))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The port of the `metrics.bind` listener, when one is configured.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_server.as_ref().map(|(port, _)| *port)
    }

    /// Runs until the server stops (SIGINT/SIGTERM trigger a graceful shutdown).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let refresher = spawn_refresher(self.services.clone(), &self.metrics);
        let heartbeat = spawn_heartbeat(self.services.clone());
        let upkeep = spawn_metrics_upkeep(self.metrics.clone());
        let audit = self
            .services
            .audit
            .writer()
            .map(|w| actix_web::rt::spawn(self.metrics.in_scope(w)));
        let purge = spawn_audit_purge(self.services.clone());
        let webhook_purge = spawn_webhook_purge(self.services.clone());
        let dispatcher = self.services.settings().webhooks.dispatch.then(|| {
            let d = self.services.dispatcher.clone();
            actix_web::rt::spawn(self.metrics.in_scope(d.run()))
        });
        let bulk_poller = self.services.settings().bulk.poll.then(|| {
            let p = self.services.bulk_poller.clone();
            actix_web::rt::spawn(self.metrics.in_scope(p.run()))
        });
        let key_reload = spawn_key_reload(self.services.clone());
        let metrics_server = self.metrics_server.map(|(_, server)| {
            let handle = server.handle();
            (handle, actix_web::rt::spawn(server))
        });
        let result = self.server.await;
        if let Some(h) = refresher {
            h.abort();
        }
        // Refreshes still running (their requests may be gone) commit before the process exits;
        // the heartbeat keeps their leases ours meanwhile.
        let tokens = &self.services.tokens;
        let wait = Duration::from_millis(self.services.settings().tokens.shutdown_refresh_wait_ms);
        if !tokens.drain(wait).await {
            tracing::warn!(
                refreshes = tokens.refreshes_in_flight(),
                "token refreshes still running at shutdown; their leases are reclaimed once this instance's heartbeat is stale"
            );
        }
        heartbeat.abort();
        if let Err(e) = tokens.deregister().await {
            tracing::warn!(code = %e.code(), "could not remove this instance's row");
        }
        upkeep.abort();
        purge.abort();
        webhook_purge.abort();
        if let Some(h) = dispatcher {
            // An attempt cut short is retried (by any replica) once its lease lapses.
            h.abort();
        }
        if let Some(h) = bulk_poller {
            // A poll cut short is redone (by any replica) once its job lease lapses.
            h.abort();
        }
        key_reload.abort();
        if let Some(task) = audit {
            // Graceful shutdown: what the last requests queued is written before exiting.
            self.services.audit.shutdown().await;
            let _ = task.await;
        }
        if let Some((handle, task)) = metrics_server {
            handle.stop(true).await;
            let _ = task.await;
        }
        result
    }
}

/// Folds histogram samples into buckets between scrapes, so memory stays flat when nobody
/// scrapes.
fn spawn_metrics_upkeep(metrics: Metrics) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            metrics.upkeep();
        }
    })
}

/// Re-reads the key file every `secrets.reload_interval_ms` and swaps in a changed ring, so
/// `switchboard keys rotate` reaches every replica without a restart. A file that cannot be
/// read or parsed keeps the current ring (warned).
fn spawn_key_reload(services: Services) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(services.settings().secrets.reload_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The digest of the file last parsed: an unchanged file is not parsed again.
        let mut seen = None;
        loop {
            tick.tick().await;
            let svc = services.clone();
            let reloaded = tokio::task::spawn_blocking(move || {
                let result = svc.reload_key_ring(&mut seen);
                (result, seen)
            })
            .await;
            match reloaded {
                Ok((result, digest)) => {
                    seen = digest;
                    match result {
                        Ok(Some(primary)) => {
                            tracing::info!(primary = %primary, "reloaded the encryption key ring")
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reload the encryption key ring")
                        }
                    }
                }
                Err(_) => seen = None,
            }
        }
    })
}

/// Applies the audit retention (`audit.retention_days`) every hour, the first time at start.
fn spawn_audit_purge(services: Services) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match services.audit.purge(switchboard_core::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(records = n, "purged audit records past retention"),
                Err(e) => tracing::warn!(code = %e.code(), "audit purge failed"),
            }
        }
    })
}

/// Applies the webhook retention (`webhooks.retention_days`) every hour, the first time at start.
fn spawn_webhook_purge(services: Services) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match services.dispatcher.purge().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "purged webhook events past retention"),
                Err(e) => tracing::warn!(code = %e.code(), "webhook purge failed"),
            }
        }
    })
}

/// Writes this process's heartbeat every `tokens.instance_heartbeat_ms` (so its refresh leases
/// are not taken over) and, about once a minute, purges the rows of long-dead instances.
fn spawn_heartbeat(services: Services) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        let every = services.settings().tokens.instance_heartbeat_ms.max(1);
        let purge_every = (60_000 / every).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats: u64 = 0;
        loop {
            tick.tick().await;
            let purge = beats.is_multiple_of(purge_every);
            beats += 1;
            if let Err(e) = services.tokens.heartbeat(purge).await {
                tracing::warn!(code = %e.code(), "instance heartbeat failed");
            }
        }
    })
}

/// Keeps idle installs' tokens alive (see `tokens.background_refresh_*`); what it records
/// goes to the application's metrics.
fn spawn_refresher(services: Services, metrics: &Metrics) -> Option<tokio::task::JoinHandle<()>> {
    let every = services.settings().tokens.background_refresh_interval_secs;
    if every == 0 {
        return None;
    }
    Some(actix_web::rt::spawn(metrics.in_scope(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(every));
        tick.tick().await;
        loop {
            tick.tick().await;
            match services.tokens.refresh_due_installs().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(installs = n, "background refresh pass"),
                Err(e) => tracing::warn!(code = %e.code(), "background refresh pass failed"),
            }
        }
    })))
}
