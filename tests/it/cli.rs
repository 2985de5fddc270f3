//! The operator CLI, run as the real binary: `tenant create`, `migrate`, `connectors validate`,
//! `audit export` and `audit purge`, and `serve` refusing a broken connector file.
//!
//! Single-backend (SQLite) on purpose: these tests exercise the binary's command-line surface
//! (argument parsing, configuration from SWITCHBOARD__* variables, stdout/exit-code contracts,
//! key-file creation); the storage code under them is the same `Services` the HTTP tests run on
//! both backends, and a PostgreSQL variant would only re-run that.

use crate::support::set;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

fn cli(dir: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SWITCHBOARD_ENV")
        .env_remove("RUST_LOG")
        .env(
            "SWITCHBOARD__DATABASE__URL",
            format!("sqlite://{}", dir.join("switchboard.db").display()),
        )
        .env(
            "SWITCHBOARD__SECRETS__KEY_FILE",
            dir.join("keys/secret.key"),
        )
        .env("SWITCHBOARD__CONNECTORS__DIR", dir.join("connectors"));
    cmd
}

fn copy_connectors(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(crate::support::repo_root().join("connectors")).unwrap() {
        let entry = entry.unwrap();
        crate::support::copy_entry(&entry.path(), &to.join(entry.file_name())).unwrap();
    }
}

#[actix_web::test]
async fn cli_tenant_create_and_migrate() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    copy_connectors(&dir.path().join("connectors"));

    let out = cli(dir.path(), &["migrate"]).output().unwrap();
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("switchboard.db").exists());

    let out = cli(dir.path(), &["tenant", "create", "Acme"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "tenant create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    let created: Value = serde_json::from_str(lines[0]).expect("a JSON line");
    let obj = created.as_object().unwrap();
    assert_eq!(
        obj.keys().cloned().collect::<BTreeSet<_>>(),
        set(&["api_key", "tenant"])
    );
    let tenant = created["tenant"].as_str().unwrap().to_owned();
    let key = created["api_key"].as_str().unwrap().to_owned();
    assert!(tenant.starts_with("ten_"), "{tenant}");
    assert!(key.starts_with("sbk_"), "{key}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(&key), "the key is logged");

    let key_file = dir.path().join("keys/secret.key");
    let mode = std::fs::metadata(&key_file)
        .expect("key file created")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode {:o}", mode & 0o777);

    // An invalid name fails without printing a key.
    let out = cli(dir.path(), &["tenant", "create", "  "])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Migrating again is a no-op that succeeds.
    let out = cli(dir.path(), &["migrate"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The printed key authenticates as the printed tenant against that database, and only its
    // hash is stored.
    let db_url = format!("sqlite://{}", dir.path().join("switchboard.db").display());
    let mut settings = crate::support::test_settings(&db_url, dir.path(), 1);
    settings.secrets.key_file = key_file;
    let services = switchboard_service::Services::build(settings).expect("services");
    let ctx = services
        .keys
        .authenticate(&key)
        .await
        .expect("authenticate")
        .expect("the printed key is valid");
    assert_eq!(ctx.tenant_id(), tenant);
    let db_bytes = std::fs::read(dir.path().join("switchboard.db")).unwrap();
    let mut all = String::from_utf8_lossy(&db_bytes).into_owned();
    if let Ok(wal) = std::fs::read(dir.path().join("switchboard.db-wal")) {
        all.push_str(&String::from_utf8_lossy(&wal));
    }
    assert!(all.contains(&tenant), "the tenant is stored");
    assert!(!all.contains(&key), "the plaintext key is stored");
}

#[test]
fn cli_connectors_validate() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::support::repo_root();

    // The shipped connectors are valid.
    let out = cli(dir.path(), &["connectors", "validate", "connectors"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The broken fixture: exit 1 and exactly the documented `file:line: message` lines.
    let fixture = "crates/switchboard-connector/tests/fixtures/broken";
    let out = cli(dir.path(), &["connectors", "validate", fixture])
        .current_dir(&root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let got: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    for line in &got {
        let mut parts = line.splitn(3, ':');
        let (file, lineno, msg) = (parts.next().unwrap(), parts.next(), parts.next());
        assert!(file.ends_with(".toml"), "not file:line: message: {line}");
        assert!(
            lineno.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
            "not file:line: message: {line}"
        );
        assert!(
            msg.is_some_and(|m| m.starts_with(' ') && m.trim().len() > 3),
            "not file:line: message: {line}"
        );
    }
    let doc = std::fs::read_to_string(root.join(fixture).join("broken.toml")).unwrap();
    let expected: Vec<String> = doc
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("#   broken.toml:"))
        .map(|rest| format!("{fixture}/broken.toml:{rest}"))
        .collect();
    assert!(expected.len() >= 10, "the fixture documents its lines");
    assert_eq!(got, expected);
}

/// Kills the child on drop so a failed assertion leaves no server behind.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn cli_serve_refuses_a_broken_connector() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let conn = dir.path().join("connectors");
    copy_connectors(&conn);
    let canvas = std::fs::read_to_string(conn.join("canvas.toml")).unwrap();
    let lineno = canvas
        .lines()
        .position(|l| l.trim() == "verb = \"GET\"")
        .expect("a GET method")
        + 1;
    std::fs::write(
        conn.join("canvas.toml"),
        canvas.replacen("verb = \"GET\"", "verb = \"FETCH\"", 1),
    )
    .unwrap();
    // The validator agrees the copy is broken.
    let out = cli(dir.path(), &["connectors", "validate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = cli(dir.path(), &["serve"])
        .env("SWITCHBOARD__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env(
            "SWITCHBOARD__SERVER__PUBLIC_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve kept running with a broken connector file"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    guard
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut stdout = String::new();
    guard
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(!status.success(), "serve exited 0");
    let needle = format!("canvas.toml:{lineno}:");
    assert!(
        stderr.contains(&needle) && stderr.contains("FETCH"),
        "stderr does not name the file and line ({needle}):\n{stderr}"
    );
    assert!(
        !stderr.contains("listening") && !stdout.contains("listening"),
        "{stderr}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something serves on the port"
    );
}

/// `audit export --since` prints NDJSON of every tenant's records; `audit purge` applies the
/// retention (a zero-day retention is refused by the settings, so purge keeps fresh records).
#[actix_web::test]
async fn cli_audit_export_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    copy_connectors(&dir.path().join("connectors"));
    // Records to export: creating API keys through the services of this database.
    let out = cli(dir.path(), &["tenant", "create", "Acme"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = format!("sqlite://{}", dir.path().join("switchboard.db").display());
    let mut settings = crate::support::test_settings(&url, dir.path(), 0);
    settings.secrets.key_file = dir.path().join("keys/secret.key");
    settings.connectors.dir = dir.path().join("connectors");
    let services = switchboard_service::Services::build(settings).unwrap();
    let ctx = services
        .keys
        .authenticate(created["api_key"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    let writer = actix_web::rt::spawn(services.audit.writer().unwrap());
    for name in ["one", "two"] {
        services.keys.create_api_key(&ctx, name).await.unwrap();
    }
    services.audit.shutdown().await;
    writer.await.unwrap();

    let out = cli(
        dir.path(),
        &["audit", "export", "--since", "2000-01-01T00:00:00Z"],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(
        lines.len(),
        3,
        "tenant create's first key and two more: {stdout}"
    );
    for l in &lines {
        assert_eq!(l["tenant_id"], created["tenant"]);
        assert_eq!(l["kind"], "admin");
        assert!(l["action"]
            .as_str()
            .unwrap()
            .starts_with("api_key.created:"));
    }
    let later = cli(dir.path(), &["audit", "export", "--since", "4102444800000"])
        .output()
        .unwrap();
    assert!(later.status.success());
    assert!(later.stdout.is_empty(), "nothing after 2100");
    let bad = cli(dir.path(), &["audit", "export", "--since", "yesterday"])
        .output()
        .unwrap();
    assert!(!bad.status.success());

    let out = cli(dir.path(), &["audit", "purge"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 audit record(s) purged"));
    let out = cli(dir.path(), &["audit", "purge"])
        .env("SWITCHBOARD__AUDIT__RETENTION_DAYS", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let again = cli(dir.path(), &["audit", "export", "--since", "0"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(again.stdout).unwrap().lines().count(),
        3,
        "a day has not passed"
    );
}
