//! Token-refresh benchmark (docs/BENCHMARKS.md, "Token refresh"): how many token requests N
//! concurrent method calls on an install whose access token has expired cause, and how long
//! serving them takes, with one and with two Switchboard processes on one database.
//!
//! ```text
//! cargo run --release --example refresh_bench
//! BACKENDS=sqlite SIZES=10,100 ROUNDS=5 cargo run --release --example refresh_bench
//! TOKEN_DELAY_MS=200 cargo run --release --example refresh_bench
//! ```
//!
//! Everything runs on 127.0.0.1: FakeOAuth (Canvas layout, rotating refresh tokens) and FakeFhir
//! from switchboard-testkit, and Switchboard itself through `Application::build_with_listener`,
//! the builder `main` uses. "Two processes" are two `Application`s in this OS process, each with
//! its own `Services` (its own per-install locks, install cache and lease owner id) on one
//! database, so only the database lease coordinates them, as between two hosts. PostgreSQL
//! comes from the testkit's throwaway cluster and is skipped when its binaries are missing.
//!
//! Each measurement uses a new authorized install whose token is then expired in the database
//! and at the provider; the client's N keep-alive connections are opened beforehand, so the
//! time is the server's: from sending the N calls to the last answer.

use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};
use switchboard::Application;
use switchboard_config::Settings;
use switchboard_core::now_ms;
use switchboard_service::Services;
use switchboard_testkit::fhir::FakeFhir;
use switchboard_testkit::oauth::{FakeOAuth, OAuthClient, TokenFault};

const CLIENT_ID: &str = "bench-app";
const CLIENT_SECRET: &str = "bench-secret";

struct Server {
    base: String,
    services: Services,
}

async fn start_server(db_url: &str, key_file: &Path, work: &Path) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let connectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors");
    let env = [
        ("SWITCHBOARD__DATABASE__URL", db_url.to_owned()),
        ("SWITCHBOARD__SERVER__BIND", format!("127.0.0.1:{port}")),
        (
            "SWITCHBOARD__SERVER__PUBLIC_URL",
            format!("http://127.0.0.1:{port}"),
        ),
        ("SWITCHBOARD__SERVER__WORKERS", "2".into()),
        (
            "SWITCHBOARD__CONNECTORS__DIR",
            connectors.display().to_string(),
        ),
        (
            "SWITCHBOARD__SECRETS__KEY_FILE",
            key_file.display().to_string(),
        ),
        (
            "SWITCHBOARD__SECURITY__ALLOW_INSECURE_UPSTREAMS",
            "true".into(),
        ),
        (
            "SWITCHBOARD__TOKENS__BACKGROUND_REFRESH_INTERVAL_SECS",
            "0".into(),
        ),
        ("SWITCHBOARD__LOG__LEVEL", "warn".into()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let settings = Settings::load_from(&work.join("no-config"), env).expect("settings");
    let app = Application::build_with_listener(settings, listener)
        .await
        .expect("application builds");
    let services = app.services().clone();
    actix_web::rt::spawn(app.run_until_stopped());
    Server {
        base: format!("http://127.0.0.1:{port}"),
        services,
    }
}

struct Measurement {
    token_requests: usize,
    ok: usize,
    wall: Duration,
    p50: Duration,
    p99: Duration,
}

struct Bench {
    servers: Vec<Server>,
    oauth: FakeOAuth,
    fhir: FakeFhir,
    api_key: String,
    http: reqwest::Client,
    plain: reqwest::Client,
    next_account: usize,
}

impl Bench {
    async fn new(db_url: &str, processes: usize, work: &Path) -> Bench {
        let key_file = work.join("secret.key");
        let mut servers = Vec::new();
        for _ in 0..processes {
            servers.push(start_server(db_url, &key_file, work).await);
        }
        let mut client = OAuthClient::post(CLIENT_ID, CLIENT_SECRET, &callback(&servers[0]));
        for s in &servers[1..] {
            client = client.redirect_uri(&callback(s));
        }
        let oauth = FakeOAuth::builder().prefix("/auth/").client(client).start();
        let fhir = FakeFhir::builder()
            .prefix("/")
            .seed_patients(1)
            .accept_tokens_from(oauth.token_validator())
            .start();
        let created = servers[0]
            .services
            .keys
            .create_tenant("Bench")
            .await
            .expect("tenant");
        let bench = Bench {
            servers,
            oauth,
            fhir,
            api_key: created.api_key,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(2000)
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            plain: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            next_account: 0,
        };
        let setup = json!({"settings": {
            "instance_url": format!("{}/", bench.oauth.origin()),
            "fhir_base_url": bench.fhir.base_url(),
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }});
        bench
            .send("PUT", "/v1/connectors/canvas/setup", setup)
            .await;
        bench
    }

    async fn send(&self, verb: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.servers[0].base);
        let req = match verb {
            "PUT" => self.plain.put(url),
            _ => self.plain.post(url),
        };
        let res = req
            .bearer_auth(&self.api_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{verb} {path}: {status} {v}");
        v
    }

    /// A new authorized Canvas install (authorization-code flow through FakeOAuth).
    async fn authorized_install(&mut self) -> (String, String) {
        self.next_account += 1;
        let account = format!("acct-{}", self.next_account);
        self.send(
            "POST",
            "/v1/accounts",
            json!({"id": account, "name": account}),
        )
        .await;
        let created = self
            .send(
                "POST",
                &format!("/v1/accounts/{account}/installs"),
                json!({"connector": "canvas"}),
            )
            .await;
        let authorize = created["authorize_url"].as_str().unwrap();
        let res = self.plain.get(authorize).send().await.unwrap();
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        let res = self.plain.get(location).send().await.unwrap();
        assert!(res.status().is_success(), "callback: {}", res.status());
        (account, created["id"].as_str().unwrap().to_owned())
    }

    async fn expire(&self, install: &str) {
        use diesel::prelude::*;
        use switchboard_db::schema::installs::dsl as i;
        let id = install.to_owned();
        let past = now_ms() - 1_000;
        self.servers[0]
            .services
            .db()
            .run(move |c| {
                diesel::update(i::installs.find(&id))
                    .set(i::token_expires_at.eq(Some(past)))
                    .execute(c)?;
                Ok(())
            })
            .await
            .expect("expire");
        self.oauth.expire_access_tokens();
    }

    /// Opens `n` keep-alive connections to every server (so the burst measures the server).
    async fn warm(&self, n: usize) {
        let gets = self.servers.iter().flat_map(|s| {
            (0..n).map(move |_| {
                self.http
                    .get(format!("{}/v1/accounts", s.base))
                    .bearer_auth(&self.api_key)
                    .send()
            })
        });
        for r in futures_util::future::join_all(gets).await {
            r.unwrap().bytes().await.unwrap();
        }
    }

    async fn measure(&mut self, n: usize, token_delay: Duration) -> Measurement {
        let (account, install) = self.authorized_install().await;
        self.warm(n.div_ceil(self.servers.len())).await;
        self.expire(&install).await;
        if !token_delay.is_zero() {
            // Only the refresh is slowed, not the authorization above.
            self.oauth
                .fail_token_next(1, TokenFault::Delay(token_delay));
        }
        let tokens_before = self.oauth.token_request_count();
        let per = self.servers.len();
        let calls = (0..n).map(|k| {
            let url = format!(
                "{}/v1/accounts/{account}/installs/{install}/methods/get_patient",
                self.servers[k % per].base
            );
            let req = self
                .http
                .post(url)
                .bearer_auth(&self.api_key)
                .json(&json!({"params": {"id": "pat-0001"}}));
            async move {
                let started = Instant::now();
                let ok = match req.send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                (ok, started.elapsed())
            }
        });
        let started = Instant::now();
        let results = futures_util::future::join_all(calls).await;
        let wall = started.elapsed();
        let mut latencies: Vec<Duration> = results.iter().map(|r| r.1).collect();
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).max(1) - 1];
        Measurement {
            token_requests: self.oauth.token_request_count() - tokens_before,
            ok: results.iter().filter(|r| r.0).count(),
            wall,
            p50: pct(0.50),
            p99: pct(0.99),
        }
    }
}

fn callback(s: &Server) -> String {
    format!("{}/connector/callback", s.base)
}

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[actix_web::main]
async fn main() {
    let backends = list("BACKENDS", "sqlite,postgres");
    let sizes: Vec<usize> = list("SIZES", "10,100,1000")
        .iter()
        .map(|s| s.parse().expect("SIZES: numbers"))
        .collect();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .map_or(3, |r| r.parse().expect("ROUNDS: a number"));
    let token_delay = std::env::var("TOKEN_DELAY_MS")
        .ok()
        .map_or(0, |d| d.parse::<u64>().expect("TOKEN_DELAY_MS: a number"));

    println!(
        "token endpoint delay {token_delay} ms, {rounds} round(s) per row; wall/p50/p99 in ms: median over rounds"
    );
    println!();
    println!(
        "| backend | processes | N | token requests (each round) | calls OK | wall | p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for backend in &backends {
        for processes in [1usize, 2] {
            let work = tempfile::tempdir().expect("tempdir");
            let db_url = match backend.as_str() {
                "sqlite" => switchboard_testkit::pg::sqlite_url(work.path()),
                "postgres" => match switchboard_testkit::pg::cluster() {
                    Some(c) => c.create_database(),
                    None => {
                        println!("| postgres | {processes} | - | skipped: no PostgreSQL binaries | | | | |");
                        continue;
                    }
                },
                other => panic!("unknown backend {other}"),
            };
            let mut bench = Bench::new(&db_url, processes, work.path()).await;
            for &n in &sizes {
                let mut runs = Vec::new();
                for _ in 0..rounds {
                    runs.push(bench.measure(n, Duration::from_millis(token_delay)).await);
                    bench.oauth.clear_token_faults();
                }
                let median = |f: &dyn Fn(&Measurement) -> Duration| {
                    let mut v: Vec<Duration> = runs.iter().map(f).collect();
                    v.sort();
                    v[v.len() / 2]
                };
                let tokens: Vec<String> =
                    runs.iter().map(|m| m.token_requests.to_string()).collect();
                let ok: usize = runs.iter().map(|m| m.ok).sum();
                println!(
                    "| {backend} | {processes} | {n} | {} | {ok}/{} | {} | {} | {} |",
                    tokens.join(", "),
                    n * rounds,
                    ms(median(&|m| m.wall)),
                    ms(median(&|m| m.p50)),
                    ms(median(&|m| m.p99)),
                );
            }
        }
    }
}
