use super::*;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn insecure() -> Outbound {
    Outbound::new(OutboundConfig::danger_allow_insecure()).unwrap()
}

fn get(url: &str) -> reqwest::Request {
    reqwest::Request::new(reqwest::Method::GET, Url::parse(url).unwrap())
}

async fn calls(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{}"))
        .mount(&server)
        .await;
    let started = Instant::now();
    let resp = insecure()
        .send(get(&format!("{}/x", server.uri())), RetryPolicy::OnThrottle)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(&resp.body[..], b"{}");
    assert_eq!(calls(&server).await, 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retry_after_http_date_is_honoured() {
    let server = MockServer::start().await;
    // Whole seconds: now + 2s formatted is between 1 and 2 seconds away.
    let at = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", at.as_str()))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let started = Instant::now();
    let resp = insecure()
        .send(get(&server.uri()), RetryPolicy::OnThrottle)
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(calls(&server).await, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn exhausted_503_reports_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "0"))
        .mount(&server)
        .await;
    let out = Outbound::new(OutboundConfig {
        max_retries: 2,
        ..OutboundConfig::danger_allow_insecure()
    })
    .unwrap();
    let err = out
        .send(get(&server.uri()), RetryPolicy::OnThrottle)
        .await
        .unwrap_err();
    match err {
        OutboundError::RetriesExhausted {
            status,
            retry_after,
        } => {
            assert_eq!(status, 503);
            assert_eq!(retry_after, Some(Duration::ZERO));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(calls(&server).await, 3);
}

#[tokio::test]
async fn exhausted_without_retry_after_uses_backoff() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429))
        .mount(&server)
        .await;
    let err = insecure()
        .send(get(&server.uri()), RetryPolicy::OnThrottle)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        OutboundError::RetriesExhausted {
            status: 429,
            retry_after: None
        }
    ));
    assert_eq!(calls(&server).await, 4, "1 attempt + max_retries 3");
}

#[tokio::test]
async fn retry_after_above_cap_is_not_waited_for() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "120"))
        .mount(&server)
        .await;
    let started = Instant::now();
    let err = insecure()
        .send(get(&server.uri()), RetryPolicy::OnThrottle)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        OutboundError::RetriesExhausted { status: 429, retry_after: Some(d) } if d == Duration::from_secs(120)
    ));
    assert_eq!(calls(&server).await, 1);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn no_retry_policy_returns_the_throttle_response() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "3"))
        .mount(&server)
        .await;
    let req = reqwest::Request::new(reqwest::Method::POST, Url::parse(&server.uri()).unwrap());
    let resp = insecure().send(req, RetryPolicy::Never).await.unwrap();
    assert_eq!(resp.status, 429);
    assert_eq!(
        parse_retry_after(&resp.headers),
        Some(Duration::from_secs(3))
    );
    assert_eq!(calls(&server).await, 1);
}

#[tokio::test]
async fn declared_length_over_cap_is_refused() {
    let server = MockServer::start().await;
    Mock::given(path("/big"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'a'; 2000]))
        .mount(&server)
        .await;
    Mock::given(path("/exact"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![b'a'; 1000]))
        .mount(&server)
        .await;
    let out = Outbound::new(OutboundConfig {
        max_response_bytes: 1000,
        ..OutboundConfig::danger_allow_insecure()
    })
    .unwrap();
    let err = out
        .send(
            get(&format!("{}/big?name=Smith", server.uri())),
            RetryPolicy::Never,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, OutboundError::TooLarge { limit: 1000, .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains("Smith"), "{err}");
    let ok = out
        .send(get(&format!("{}/exact", server.uri())), RetryPolicy::Never)
        .await
        .unwrap();
    assert_eq!(ok.body.len(), 1000);
}

/// A one-shot HTTP/1.1 server answering with a chunked body (no Content-Length).
async fn chunked_server(chunks: Vec<Vec<u8>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut tmp).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        sock.write_all(head.as_bytes()).await.unwrap();
        for c in chunks {
            let mut frame = format!("{:x}\r\n", c.len()).into_bytes();
            frame.extend_from_slice(&c);
            frame.extend_from_slice(b"\r\n");
            if sock.write_all(&frame).await.is_err() {
                return;
            }
            let _ = sock.flush().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = sock.write_all(b"0\r\n\r\n").await;
        let _ = sock.flush().await;
    });
    format!("http://{addr}/")
}

#[tokio::test]
async fn undeclared_length_over_cap_is_refused() {
    let url = chunked_server(vec![vec![b'a'; 600], vec![b'b'; 600]]).await;
    let out = Outbound::new(OutboundConfig {
        max_response_bytes: 1000,
        ..OutboundConfig::danger_allow_insecure()
    })
    .unwrap();
    let err = out.send(get(&url), RetryPolicy::Never).await.unwrap_err();
    assert!(matches!(err, OutboundError::TooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn undeclared_length_under_cap_is_assembled() {
    let url = chunked_server(vec![b"[1,".to_vec(), b"2,".to_vec(), b"3]".to_vec()]).await;
    let resp = insecure()
        .send(get(&url), RetryPolicy::Never)
        .await
        .unwrap();
    assert_eq!(&resp.body[..], b"[1,2,3]");
    assert_eq!(resp.content_type(), Some("application/json"));
}

#[tokio::test]
async fn slow_upstream_times_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let out = Outbound::new(OutboundConfig {
        request_timeout: Duration::from_millis(300),
        ..OutboundConfig::danger_allow_insecure()
    })
    .unwrap();
    let started = Instant::now();
    let err = out
        .send(
            get(&format!("{}/Patient?family=Smith", server.uri())),
            RetryPolicy::OnThrottle,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, OutboundError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let text = err.to_string();
    assert!(text.ends_with("/Patient: timed out"), "{text}");
    assert!(!text.contains("Smith"));
}

#[tokio::test]
async fn refused_connection_is_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = insecure()
        .send(
            get(&format!("http://127.0.0.1:{port}/?q=secret")),
            RetryPolicy::Never,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, OutboundError::Connect { .. }), "{err:?}");
    // Neither Display nor Debug (which includes the reqwest source) leaks the query.
    assert!(!format!("{err} {err:?}").contains("secret"));
}

#[tokio::test]
async fn loopback_refused_unless_insecure() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let secure = Outbound::new(OutboundConfig::default()).unwrap();
    let https_loopback = server.uri().replace("http://", "https://");
    let err = secure
        .send(get(&https_loopback), RetryPolicy::Never)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OutboundError::NotAllowed {
                reason: PolicyViolation::Address,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(calls(&server).await, 0);
    assert_eq!(
        insecure()
            .send(get(&server.uri()), RetryPolicy::Never)
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn plain_http_refused_unless_insecure() {
    let secure = Outbound::new(OutboundConfig::default()).unwrap();
    let url = Url::parse("http://ehr.example.com/fhir/").unwrap();
    let err = secure.check_url(&url).unwrap_err();
    assert!(matches!(
        err,
        OutboundError::NotAllowed {
            reason: PolicyViolation::Scheme,
            ..
        }
    ));
    let err = secure
        .send(get(url.as_str()), RetryPolicy::Never)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        OutboundError::NotAllowed {
            reason: PolicyViolation::Scheme,
            ..
        }
    ));
    assert!(insecure().check_url(&url).is_ok());
}

#[tokio::test]
async fn resolver_blocks_names_on_every_thread_s_client() {
    // Bypasses check_url on purpose: the client's own resolver must refuse the name, on the
    // client built with the Outbound and on one a later thread gets.
    let secure = Outbound::new(OutboundConfig::default()).unwrap();
    let other_thread =
        std::thread::scope(|s| s.spawn(|| secure.client().unwrap().clone()).join().unwrap());
    let safe = SafeUrl::new(&Url::parse("https://localhost/").unwrap());
    for client in [secure.client().unwrap(), &other_thread] {
        let err = client.get("https://localhost:9/").send().await.unwrap_err();
        let err = classify(err, &safe);
        assert!(
            matches!(
                err,
                OutboundError::NotAllowed {
                    reason: PolicyViolation::Address,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn safe_url_keeps_scheme_host_port_path_only() {
    let u =
        Url::parse("https://user:pw@ehr.example.com:8443/fhir/Patient?name=Smith#frag").unwrap();
    assert_eq!(
        SafeUrl::new(&u).as_str(),
        "https://ehr.example.com:8443/fhir/Patient"
    );
}

#[test]
fn client_for_refuses_every_loopback_notation() {
    let secure = Outbound::new(OutboundConfig::default()).unwrap();
    for (url, why) in [
        ("http://127.0.0.1/", PolicyViolation::Scheme),
        ("https://127.0.0.1:8443/token", PolicyViolation::Address),
        ("https://[::1]/token", PolicyViolation::Address),
        ("https://2130706433/token", PolicyViolation::Address),
        ("https://0x7f.1/token", PolicyViolation::Address),
        ("https://0177.0.0.1/token", PolicyViolation::Address),
        ("https://[::ffff:7f00:1]/token", PolicyViolation::Address),
        ("https://localhost/token", PolicyViolation::Address),
        ("https://169.254.169.254/latest", PolicyViolation::Address),
    ] {
        let err = secure
            .client_for(&Url::parse(url).unwrap())
            .err()
            .unwrap_or_else(|| panic!("{url} allowed"));
        assert!(
            matches!(err, OutboundError::NotAllowed { reason, .. } if reason == why),
            "{url}: {err:?}"
        );
    }
    assert!(secure
        .client_for(&Url::parse("https://ehr.example.com/token").unwrap())
        .is_ok());
}

#[tokio::test]
async fn redirects_are_never_followed() {
    // An allowed upstream answering with a redirect to another address: the client hands the
    // 3xx back and never connects to the target.
    let target = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&target)
        .await;
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(307).insert_header("location", format!("{}/x", target.uri())),
        )
        .mount(&upstream)
        .await;
    let resp = insecure()
        .send(get(&upstream.uri()), RetryPolicy::Never)
        .await
        .unwrap();
    assert_eq!(resp.status, 307);
    assert_eq!(calls(&target).await, 0);
}

/// `get_document`: the extra headers and `Accept` are sent, a BOM is dropped, a non-2xx status
/// and a body over the limit are refused (never truncated), an unreachable host names no body.
#[tokio::test]
async fn get_document_reads_a_bounded_body() {
    use wiremock::matchers::header;
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/doc"))
        .and(header("accept", "application/json"))
        .and(header("x-client", "c1"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(b"\xEF\xBB\xBF{\"a\":1}".to_vec()))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/missing"))
        .respond_with(ResponseTemplate::new(404).set_body_string("secret body"))
        .mount(&server)
        .await;
    let out = insecure();
    let url = |p: &str| Url::parse(&format!("{}{p}", server.uri())).unwrap();
    let http = out.client_for(&url("/doc")).unwrap();
    let headers = [("x-client".to_owned(), "c1".to_owned())];
    let body = get_document(http, url("/doc"), "application/json", &headers, 64)
        .await
        .unwrap();
    assert_eq!(body, b"{\"a\":1}");
    assert_eq!(
        get_document(http, url("/doc"), "application/json", &headers, 4).await,
        Err(DocumentError::TooLarge)
    );
    let e = get_document(http, url("/missing"), "application/json", &[], 64)
        .await
        .unwrap_err();
    assert_eq!(e, DocumentError::Status(404));
    assert_eq!(e.to_string(), "answered HTTP 404");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gone = Url::parse(&format!("http://127.0.0.1:{closed}/doc")).unwrap();
    assert_eq!(
        get_document(http, gone, "application/json", &[], 64).await,
        Err(DocumentError::Unreachable("connection failed"))
    );
}

/// A keep-alive HTTP/1.1 server on 127.0.0.1 (on its own thread and runtime) answering every
/// request `200 {}`; returns its base URL and the number of connections it has accepted.
fn counting_keep_alive_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = Arc::new(AtomicUsize::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = accepted.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        // One answer per complete request head (GETs: no body).
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                            if sock.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
    });
    (url, accepted)
}

#[test]
fn each_thread_sends_on_connections_of_its_own() {
    use std::sync::atomic::Ordering;
    let (url, accepted) = counting_keep_alive_server();
    let out = insecure();
    // This thread's runtime stays up, so its idle connection stays usable: a shared pool would
    // hand it to the other thread below. A current-thread runtime runs its tasks only inside
    // `block_on`, which makes the steps below happen in order.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let send = |out: &Outbound, rt: &tokio::runtime::Runtime| {
        let resp = rt
            .block_on(out.send(get(&format!("{url}/x")), RetryPolicy::Never))
            .unwrap();
        assert_eq!(resp.status, 200);
        // hyper puts an HTTP/1 connection back into its pool from a task of its own, once the
        // connection is ready for the next request. Give the runtime turns until that task has
        // run (no time passes: each yield lets every ready task run first); without this, the
        // next request could race it and open a second connection.
        rt.block_on(async {
            for _ in 0..64 {
                tokio::task::yield_now().await;
            }
        });
    };
    send(&out, &rt);
    send(&out, &rt);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one thread's calls share its keep-alive connection"
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            let other = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            send(&out, &other);
        });
    });
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "another thread opens its own connection instead of borrowing this thread's"
    );
    send(&out, &rt);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
