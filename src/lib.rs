//! The `switchboard` binary's library half: the CLI, `Application::build` (used by `main` and
//! by the integration tests alike), telemetry and the background token refresher.

pub mod cli;
pub mod telemetry;

use actix_web::{dev::Service as _, App, HttpServer};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard_api::Metrics;
use switchboard_config::Settings;
use switchboard_db::Db;
use switchboard_service::{Clock, Services, SystemClock};

/// A built, bound, not yet running server.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    services: Services,
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
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let workers = match services.settings().server.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let metrics = Metrics::default();
        let svc = services.clone();
        let server = HttpServer::new(move || {
            let metrics = metrics.clone();
            let recorder = metrics.clone();
            App::new()
                .wrap_fn(move |req, srv| {
                    let started = Instant::now();
                    let method = static_method(req.method());
                    let metrics = recorder.clone();
                    let fut = srv.call(req);
                    async move {
                        let res = fut.await?;
                        // Read after routing: actix then looks the pattern up by the matched
                        // resource's index instead of matching the path against every route's
                        // regex a second time (that cost ~25% of a get_patient call's CPU).
                        let route = res
                            .request()
                            .match_pattern()
                            .unwrap_or_else(|| "unmatched".into());
                        let status = res.status().as_u16();
                        metrics.record(method, &route, status, started.elapsed());
                        tracing::debug!(method, route = %route, status, elapsed_us = started.elapsed().as_micros() as u64, "request");
                        Ok(res)
                    }
                })
                .configure(|cfg| switchboard_api::configure(cfg, svc.clone(), metrics.clone()))
        })
        .workers(workers)
        .shutdown_timeout(10)
        .listen(listener)
        .map_err(|source| AppError::Bind { addr, source })?
        .run();
        Ok(Self {
            port,
            server,
            services,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Runs until the server stops (SIGINT/SIGTERM trigger a graceful shutdown).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let refresher = spawn_refresher(self.services.clone());
        let result = self.server.await;
        if let Some(h) = refresher {
            h.abort();
        }
        result
    }
}

fn static_method(m: &actix_web::http::Method) -> &'static str {
    match *m {
        actix_web::http::Method::GET => "GET",
        actix_web::http::Method::POST => "POST",
        actix_web::http::Method::PUT => "PUT",
        actix_web::http::Method::PATCH => "PATCH",
        actix_web::http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Keeps idle installs' tokens alive (see `tokens.background_refresh_*`).
fn spawn_refresher(services: Services) -> Option<tokio::task::JoinHandle<()>> {
    let every = services.settings().tokens.background_refresh_interval_secs;
    if every == 0 {
        return None;
    }
    Some(actix_web::rt::spawn(async move {
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
    }))
}
