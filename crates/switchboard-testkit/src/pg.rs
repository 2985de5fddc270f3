//! A throwaway PostgreSQL cluster for tests: started once per test process on 127.0.0.1 with
//! durability switched off, a fresh database per test, and a watchdog that stops the server and
//! removes its directory when the test process is gone (even after SIGKILL).
//!
//! Binaries come from `$PG_BIN` or the newest `/usr/lib/postgresql/*/bin`. Without them,
//! [`cluster`] prints `SKIP: PostgreSQL binaries not found` and returns `None`, except under
//! `CI=true`, where it panics so a CI machine missing PostgreSQL cannot pass silently.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use diesel::{Connection, PgConnection, RunQueryDsl};

/// A running PostgreSQL server owned by this test process.
pub struct PgCluster {
    port: u16,
    root: PathBuf,
    bin: PathBuf,
    admin: Mutex<Option<PgConnection>>,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCluster")
            .field("port", &self.port)
            .field("root", &self.root)
            .field("bin", &self.bin)
            .finish_non_exhaustive()
    }
}

static CLUSTER: OnceLock<Result<Option<PgCluster>, String>> = OnceLock::new();

/// The process-wide cluster, started on first use (blocking, about a second). `None` when
/// PostgreSQL is not installed (outside CI). Panics if PostgreSQL is installed but cannot start.
pub fn cluster() -> Option<&'static PgCluster> {
    match CLUSTER.get_or_init(start) {
        Ok(c) => c.as_ref(),
        Err(e) => panic!("cannot start the test PostgreSQL cluster: {e}"),
    }
}

/// `sqlite://` URL of a database file inside `dir` (for the SQLite half of a test).
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("switchboard.db").display())
}

impl PgCluster {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database with a random name and returns its URL.
    pub fn create_database(&self) -> String {
        self.create_database_from("template1")
    }

    /// Creates a database as a copy of `template` (e.g. a migrated database made once per test
    /// binary) and returns its URL. The template must have no open connections.
    pub fn create_database_from(&self, template: &str) -> String {
        assert!(
            template
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "template database name must be a plain identifier"
        );
        let name = format!("test_{:016x}", rand::random::<u64>());
        // FILE_COPY: with fsync off its checkpoint is cheap, and it beats WAL_LOG for a small
        // template.
        self.admin_execute(&format!(
            "CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY"
        ));
        self.url(&name)
    }

    /// Drops a database made by [`PgCluster::create_database`] (given its URL or name),
    /// disconnecting whoever is still connected. Optional: the whole cluster goes away with the
    /// test process.
    pub fn drop_database(&self, url_or_name: &str) {
        let name = url_or_name.rsplit('/').next().unwrap_or(url_or_name);
        let name = name.split('?').next().unwrap_or(name);
        assert!(
            name.starts_with("test_")
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "only databases made by create_database can be dropped"
        );
        self.admin_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }

    /// A plain-text `pg_dump` of the database at `url` (data and schema), for assertions that
    /// nothing sensitive is stored in plaintext.
    pub fn dump(&self, url: &str) -> String {
        let out = Command::new(self.bin.join("pg_dump"))
            .arg("--no-owner")
            .arg(url)
            .output()
            .unwrap_or_else(|e| panic!("running pg_dump: {e}"));
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn admin_execute(&self, sql: &str) {
        let mut guard = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(
                    PgConnection::establish(&self.url("postgres"))
                        .unwrap_or_else(|e| panic!("connecting to the test cluster: {e}")),
                );
            }
            match diesel::sql_query(sql).execute(guard.as_mut().expect("connected")) {
                Ok(_) => return,
                // A broken admin connection is replaced once.
                Err(_) if attempt == 0 => *guard = None,
                Err(e) => panic!("{sql}: {e}"),
            }
        }
    }
}

fn say(line: &str) {
    // Straight to the file descriptor: libtest's capture only swallows print!/eprint!.
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The cluster's locale: "C" unless `PG_LOCALE` names another one the system has (for
/// instance `en_US.UTF-8`, the usual default of a production cluster, to run the suite or a
/// measurement where text compares through strcoll).
fn cluster_locale() -> String {
    std::env::var("PG_LOCALE")
        .ok()
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "C".to_owned())
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return dir.join("pg_ctl").exists().then_some(dir);
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A command for a PostgreSQL binary, run as `postgres` when we are root (the server refuses
/// to run as root).
fn pg_command(as_root: bool, bin: &Path, program: &str) -> Command {
    let exe = bin.join(program);
    if as_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(exe);
        cmd
    } else {
        Command::new(exe)
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn start() -> Result<Option<PgCluster>, String> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let Some(bin) = find_bin_dir() else {
        if in_ci {
            return Err(
                "PostgreSQL binaries not found (set PG_BIN or install postgresql); \
                 CI=true requires them"
                    .to_owned(),
            );
        }
        say("SKIP: PostgreSQL binaries not found (set PG_BIN or install postgresql): PostgreSQL tests pass without running");
        return Ok(None);
    };
    let started = Instant::now();
    let as_root = running_as_root();

    let root = tempfile::Builder::new()
        .prefix("switchboard-pg-")
        .tempdir()
        .map_err(|e| format!("creating the cluster directory: {e}"))?
        .keep();
    let data = root.join("data");
    let sock = root.join("sock");
    let log = root.join("postgres.log");
    for dir in [&data, &sock] {
        std::fs::create_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    if as_root {
        run(
            Command::new("chown").arg("-R").arg("postgres:").arg(&root),
            "chown of the cluster directory to postgres",
        )?;
    }

    spawn_watchdog(as_root, &bin, &root, &data)?;

    run(
        pg_command(as_root, &bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg(format!("--locale={}", cluster_locale())),
        "initdb",
    )?;

    let mut last_error = String::new();
    for _ in 0..5 {
        let port = free_port()?;
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB",
            sock.display()
        );
        let result = run(
            pg_command(as_root, &bin, "pg_ctl")
                .arg("start")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o", &options]),
            "pg_ctl start",
        );
        match result {
            Ok(()) => {
                let cluster = PgCluster {
                    port,
                    root: root.clone(),
                    bin: bin.clone(),
                    admin: Mutex::new(None),
                };
                wait_until_ready(&cluster)?;
                say(&format!(
                    "test PostgreSQL cluster on 127.0.0.1:{port} ({}), ready in {:.1}s",
                    root.display(),
                    started.elapsed().as_secs_f64()
                ));
                return Ok(Some(cluster));
            }
            Err(e) => {
                // Most likely the port was taken between probing and binding: try another.
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                last_error = format!("{e}\n{log_text}");
            }
        }
    }
    Err(last_error)
}

fn wait_until_ready(cluster: &PgCluster) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match PgConnection::establish(&cluster.url("postgres")) {
            Ok(conn) => {
                *cluster.admin.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                return Ok(());
            }
            Err(e) if Instant::now() > deadline => {
                return Err(format!("the cluster does not accept connections: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A detached shell that waits for this process to disappear, then stops the server (immediate
/// mode: nothing in it is worth keeping) and deletes the directory. It lives in its own process
/// group so a Ctrl-C aimed at the test run does not take it down before it has cleaned up.
fn spawn_watchdog(as_root: bool, bin: &Path, root: &Path, data: &Path) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    const SCRIPT: &str = r#"
while kill -0 "$1" 2>/dev/null; do sleep 1; done
if [ "$5" = root ]; then
    runuser -u postgres -- "$3/pg_ctl" stop -D "$4" -m immediate -w >/dev/null 2>&1
else
    "$3/pg_ctl" stop -D "$4" -m immediate -w >/dev/null 2>&1
fi
rm -rf "$2"
"#;
    Command::new("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("switchboard-pg-watchdog")
        .arg(std::process::id().to_string())
        .arg(root)
        .arg(bin)
        .arg(data)
        .arg(if as_root { "root" } else { "user" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(|e| format!("starting the cleanup watchdog: {e}"))
}
