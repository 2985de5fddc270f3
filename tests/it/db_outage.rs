//! The database going away under a running server: every request that needs it is a 503
//! `service_unavailable` with `Retry-After` (never a 500), nothing is half-written, and the server
//! serves again as soon as the database is back, without a restart.
//!
//! PostgreSQL only: the server reaches the cluster through a TCP relay the test can cut (every
//! open connection reset, new ones refused) and restore on the same port.

use crate::support::{assert_problem, postgres_available, Backend, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A TCP relay in front of the PostgreSQL cluster, on a runtime of its own (the server connects
/// synchronously at start-up, which would deadlock a relay on the test's single-threaded
/// runtime). `cut` resets every relayed connection and stops listening (new connections are
/// refused); `restore` listens again on the same port.
struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    rt: Option<tokio::runtime::Runtime>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            target,
            rt: Some(rt),
            tasks: Arc::default(),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let (target, tasks) = (self.target, self.tasks.clone());
        let rt = self.rt.as_ref().unwrap();
        let accept = rt.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// The outage: the listener and every relayed connection are dropped.
    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn restore(&self) {
        // The aborted accept task drops its listener on the relay's runtime: retry until the port
        // is free again.
        for _ in 0..1000 {
            if let Ok(listener) = std::net::TcpListener::bind(self.addr) {
                self.serve(listener);
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("could not listen on {} again", self.addr);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[actix_web::test]
async fn database_outage_is_503_with_retry_after_and_recovers() {
    if !postgres_available() {
        return;
    }
    let cluster = switchboard_testkit::pg::cluster().expect("PostgreSQL cluster");
    let direct = cluster.create_database();
    let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], cluster.port())));
    let relayed = direct.replacen(
        &format!("127.0.0.1:{}", cluster.port()),
        &relay.addr.to_string(),
        1,
    );
    assert_ne!(relayed, direct, "the URL goes through the relay");
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_on(Backend::Postgres, dir, relayed, |s| {
        s.database.pool_timeout_ms = 500;
    })
    .await;
    app.create_account("before-outage").await;
    let (_, fresh_key) = app.new_tenant("Second Console").await;

    relay.cut();

    // A cached key (the database is not needed to authenticate it) and a key never seen by this
    // process (its lookup needs the database): both get the retryable 503.
    for key in [app.api_key.clone(), fresh_key.clone()] {
        let res = app
            .http
            .post(app.url("/v1/accounts"))
            .bearer_auth(&key)
            .json(&json!({ "id": "during-outage", "name": "During" }))
            .send()
            .await
            .unwrap();
        let status = res.status();
        let retry_after = res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
        let body: serde_json::Value = res.json().await.unwrap();
        assert_problem(status, &body, 503, "service_unavailable");
        assert_eq!(content_type, "application/problem+json");
        let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
        assert!(secs >= 1, "{secs}");
        assert_eq!(body["retry_after"], secs, "{body}");
        let text = body.to_string();
        assert!(!text.contains(&relay.addr.port().to_string()), "{text}");
    }
    let res = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    // A person landing on the shared callback gets the HTML page, 503 with Retry-After too.
    let res = app
        .http
        .get(app.url("/connector/callback?state=abcdefghijklmnopqrstuvwxyz012345&code=c"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    relay.restore().await;

    // Back without a restart; the refused write changed nothing.
    let mut ready = false;
    for _ in 0..50 {
        let res = app.http.get(app.url("/readyz")).send().await.unwrap();
        if res.status() == StatusCode::OK {
            ready = true;
            break;
        }
    }
    assert!(ready, "the server recovers once the database is back");
    let (s, v) = app.get("/v1/accounts/during-outage").await;
    assert_problem(s, &v, 404, "not_found");
    let (s, v) = app.get("/v1/accounts/before-outage").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .call_as(&fresh_key, reqwest::Method::GET, "/v1/accounts", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
