//! The audit trail repository: batch insert, filtered keyset pages within a tenant, the export
//! walk and the retention purge.

use switchboard_db::repo::audit::{AuditFilter, Outcome};
use switchboard_db::{repo, AuditEvent, AuditKey, Db, NewAuditEvent};
use switchboard_testkit::both_backends;

both_backends!(
    audit_batches_page_by_at_then_id_within_the_tenant,
    audit_filters_narrow_the_page,
    audit_purge_deletes_only_older_rows,
    audit_key_first_stored_wins,
    audit_writer_batches_land_whole_and_it_recovers_after_an_error,
    audit_filters_read_their_own_index,
    audit_keys_order_by_their_bytes,
    audit_rows_read_back_every_value_as_written,
);

fn event(tenant: &str, id: &str, at: i64, status: i64) -> AuditEvent {
    AuditEvent {
        id: id.to_owned(),
        tenant_id: tenant.to_owned(),
        at,
        kind: "method_call".to_owned(),
        action: "get_patient".to_owned(),
        api_key_id: Some("key_1".to_owned()),
        account_id: Some("acc".to_owned()),
        install_id: Some("ins_1".to_owned()),
        connector_id: Some("canvas".to_owned()),
        status,
        code: (status >= 400).then(|| "upstream_error".to_owned()),
        upstream_status: Some(status),
        duration_ms: Some(3),
        request_id: Some(format!("req_{id}")),
        patient_hash: Some("ab".repeat(32)),
    }
}

/// A batch reads back exactly as written on both backends, through the service's writer
/// ([`repo::audit::AuditWriter`]: SQLite's multi-row and single-row INSERTs, PostgreSQL's
/// binary COPY) and through [`repo::audit::insert_batch`] on a pooled connection (the records
/// written inside another transaction): texts that a text format would have to escape or that
/// are empty, every NULL column, and integers at the ends of their range.
fn audit_rows_read_back_every_value_as_written(db: &Db) {
    let mut c = db.get().unwrap();
    let mut w = repo::audit::AuditWriter::new(db.clone());
    for (tenant, through_writer) in [("ten_w", true), ("ten_p", false)] {
        let rows = odd_rows(tenant);
        let n = if through_writer {
            w.insert(&new(&rows)).unwrap()
        } else {
            repo::audit::insert_batch(&mut c, &new(&rows)).unwrap()
        };
        assert_eq!(n, 67);
        let page =
            repo::audit::list_page(&mut c, tenant, &AuditFilter::default(), None, 100).unwrap();
        let mut want = rows;
        want.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
        assert_eq!(page.rows, want, "{tenant}");
    }
}

/// 67 records of `tenant` with awkward values: more rows than one multi-row INSERT of the
/// SQLite writer takes (32), so two such INSERTs and three single-row ones, with every integer
/// different from row to row, so that a value bound to the wrong row or column in either kind
/// of statement shows.
fn odd_rows(tenant: &str) -> Vec<AuditEvent> {
    let mut odd = event(tenant, "aud_odd", 1, 200);
    odd.kind = "admin".to_owned();
    odd.action = "quote \" backslash \\ slash / tab \t nl \n nul-free \u{1} \u{7f}".to_owned();
    odd.api_key_id = Some("é ü 漢字 🩺 \u{2028}\u{2029}".to_owned());
    odd.account_id = Some(String::new());
    odd.install_id = None;
    odd.connector_id = None;
    odd.code = Some("[1,2] {\"a\":null} null true".to_owned());
    odd.upstream_status = None;
    odd.duration_ms = Some(i64::MAX);
    odd.request_id = Some("  leading and trailing  ".to_owned());
    odd.patient_hash = None;
    let mut big = event(tenant, "aud_big", i64::MAX - 1, 599);
    big.status = -1;
    big.upstream_status = Some(i64::MIN);
    big.duration_ms = None;
    big.request_id = None;
    big.api_key_id = None;
    (0..67)
        .map(|i| {
            let mut r = if i % 2 == 0 { odd.clone() } else { big.clone() };
            r.id = format!("{}_{i:03}", r.id);
            r.at -= i;
            r.status += i;
            r
        })
        .collect()
}

/// The records in the shape they are inserted in.
fn new(rows: &[AuditEvent]) -> Vec<NewAuditEvent<'_>> {
    rows.iter().map(AuditEvent::as_new).collect()
}

fn ids(rows: &[AuditEvent]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

fn audit_batches_page_by_at_then_id_within_the_tenant(db: &Db) {
    let mut c = db.get().unwrap();
    // 1,200 rows: more than one INSERT chunk, in one call.
    let many: Vec<_> = (0..1_200)
        .map(|i| event("ten_a", &format!("bulk_{i:04}"), 100 + i, 200))
        .collect();
    assert_eq!(
        repo::audit::insert_batch(&mut c, &new(&many)).unwrap(),
        1_200
    );
    let rows = vec![
        event("ten_a", "z", 10, 200),
        event("ten_a", "m", 20, 200),
        event("ten_a", "b", 20, 502),
        event("ten_b", "a", 15, 200),
    ];
    assert_eq!(repo::audit::insert_batch(&mut c, &new(&rows)).unwrap(), 4);
    assert_eq!(repo::audit::insert_batch(&mut c, &[]).unwrap(), 0);

    let all = AuditFilter::default();
    let p1 = repo::audit::list_page(&mut c, "ten_a", &all, None, 2).unwrap();
    assert_eq!(ids(&p1.rows), ["z", "b"]);
    let p2 = repo::audit::list_page(&mut c, "ten_a", &all, p1.next.as_ref(), 2).unwrap();
    assert_eq!(ids(&p2.rows), ["m", "bulk_0000"]);
    assert_eq!(p1.rows[1], rows[2], "every column reads back");

    let b = repo::audit::list_page(&mut c, "ten_b", &all, None, 10).unwrap();
    assert_eq!(ids(&b.rows), ["a"]);
    assert!(b.next.is_none());

    // The export: every tenant, oldest first, from `since`; `each` can stop it.
    let mut export = Vec::new();
    let taken = repo::audit::export_each(&mut c, 15, |r| {
        export.push(r);
        export.len() < 4
    })
    .unwrap();
    assert_eq!(ids(&export), ["a", "b", "m", "bulk_0000"]);
    assert_eq!(taken, 4);
    assert_eq!(export_all(&mut c, 15).len(), 1_203);
    assert_eq!(export_all(&mut c, 100 + 1_199).len(), 1);
}

/// Every record with `at >= since`, through the export's walk.
fn export_all(c: &mut switchboard_db::AnyConnection, since: i64) -> Vec<AuditEvent> {
    let mut rows = Vec::new();
    let n = repo::audit::export_each(c, since, |r| {
        rows.push(r);
        true
    })
    .unwrap();
    assert_eq!(n, rows.len());
    rows
}

fn audit_filters_narrow_the_page(db: &Db) {
    let mut c = db.get().unwrap();
    let mut other = event("ten_a", "o", 30, 404);
    other.install_id = Some("ins_2".into());
    other.account_id = Some("acc2".into());
    other.action = "search_patients".into();
    other.patient_hash = None;
    let rows = vec![
        event("ten_a", "x", 10, 200),
        event("ten_a", "y", 20, 502),
        other,
    ];
    repo::audit::insert_batch(&mut c, &new(&rows)).unwrap();
    let page = |c: &mut _, f: AuditFilter| {
        let p = repo::audit::list_page(c, "ten_a", &f, None, 10).unwrap();
        p.rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
    };
    let f = |f: fn(&mut AuditFilter)| {
        let mut v = AuditFilter::default();
        f(&mut v);
        v
    };
    assert_eq!(
        page(&mut c, f(|v| v.install_id = Some("ins_2".into()))),
        ["o"]
    );
    assert_eq!(
        page(&mut c, f(|v| v.account_id = Some("acc".into()))),
        ["x", "y"]
    );
    assert_eq!(
        page(&mut c, f(|v| v.action = Some("get_patient".into()))),
        ["x", "y"]
    );
    assert_eq!(page(&mut c, f(|v| v.outcome = Some(Outcome::Ok))), ["x"]);
    assert_eq!(
        page(&mut c, f(|v| v.outcome = Some(Outcome::Error))),
        ["y", "o"]
    );
    assert_eq!(
        page(&mut c, f(|v| v.outcome = Some(Outcome::Status(404)))),
        ["o"]
    );
    assert_eq!(page(&mut c, f(|v| v.from = Some(20))), ["y", "o"]);
    assert_eq!(page(&mut c, f(|v| v.to = Some(20))), ["x"]);
    assert_eq!(
        page(&mut c, f(|v| v.patient_hash = Some("ab".repeat(32)))),
        ["x", "y"]
    );
    assert!(page(&mut c, f(|v| v.patient_hash = Some("cd".into()))).is_empty());
}

fn audit_purge_deletes_only_older_rows(db: &Db) {
    let mut c = db.get().unwrap();
    let rows = vec![
        event("ten_a", "old", 10, 200),
        event("ten_b", "old_b", 19, 200),
        event("ten_a", "new", 20, 200),
    ];
    repo::audit::insert_batch(&mut c, &new(&rows)).unwrap();
    assert_eq!(repo::audit::purge_before(&mut c, 20).unwrap(), 2);
    let left = export_all(&mut c, 0);
    assert_eq!(ids(&left), ["new"]);
    assert_eq!(repo::audit::purge_before(&mut c, 20).unwrap(), 0);
}

fn audit_writer_batches_land_whole_and_it_recovers_after_an_error(db: &Db) {
    let mut w = repo::audit::AuditWriter::new(db.clone());
    assert_eq!(w.insert(&[]).unwrap(), 0);
    let rows = [event("ten_a", "a", 10, 200), event("ten_a", "b", 11, 502)];
    assert_eq!(w.insert(&new(&rows)).unwrap(), 2);
    // A batch that fails (a duplicate primary key: tenant, time and id) leaves nothing of
    // itself behind...
    let bad = [event("ten_a", "c", 12, 200), event("ten_a", "a", 10, 200)];
    assert!(w.insert(&new(&bad)).is_err());
    let mut c = db.get().unwrap();
    assert_eq!(ids(&export_all(&mut c, 0)), ["a", "b"]);
    // ...and the next batch goes through on a fresh connection.
    assert_eq!(w.insert(&new(&[event("ten_a", "c", 12, 200)])).unwrap(), 1);
    let all = export_all(&mut c, 0);
    assert_eq!(ids(&all), ["a", "b", "c"]);
    assert_eq!(all[1], rows[1], "every column reads back");
}

fn audit_key_first_stored_wins(db: &Db) {
    let mut c = db.get().unwrap();
    assert!(repo::audit::find_key(&mut c, "ten_a").unwrap().is_none());
    let key = |b: u8| AuditKey {
        tenant_id: "ten_a".into(),
        sealed_key: vec![b; 8],
        created_at: 1,
    };
    assert_eq!(repo::audit::key_or_insert(&mut c, &key(1)).unwrap(), key(1));
    assert_eq!(repo::audit::key_or_insert(&mut c, &key(2)).unwrap(), key(1));
    assert!(
        !format!("{:?}", key(7)).contains("7, 7"),
        "Debug hides the sealed key"
    );
}

/// Not a test (ignored): what the audit writer's insert costs per record, on each backend, for
/// docs/BENCHMARKS.md ("Audit cost, second pass"). Batches of realistic records (one tenant,
/// 8 installs, 1,000 patients, unique request ids, ids as the service makes them) through
/// [`repo::audit::AuditWriter`] as the service's writer sends them. Prints the mean and the
/// median CPU time per record (this thread's, plus on PostgreSQL the server's backends') over
/// the batches of the second half (a table of some size, as in steady state): CPU time, not
/// wall time, as the machine may be shared.
/// `cargo test -p switchboard-db --test it -- --ignored --nocapture audit_insert_cost`
/// (`AUDIT_BENCH_BATCHES`, default 100, `AUDIT_BENCH_ROWS`, default 1,000, per batch, and
/// `AUDIT_BENCH_PATIENTS`, default 1,000).
mod audit_insert_cost {
    use switchboard_testkit::backends::{run, Backend};

    #[test]
    #[ignore = "a measurement: run it with --ignored --nocapture"]
    fn sqlite() {
        run(Backend::Sqlite, super::insert_cost);
    }

    #[test]
    #[ignore = "a measurement: run it with --ignored --nocapture"]
    fn postgres() {
        run(Backend::Postgres, super::insert_cost);
    }
}

fn bench_setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn insert_cost(db: &Db) {
    let batches = bench_setting("AUDIT_BENCH_BATCHES", 100).max(2);
    let per_batch = bench_setting("AUDIT_BENCH_ROWS", 1_000).max(1);
    let patients: Vec<String> = (0..bench_setting("AUDIT_BENCH_PATIENTS", 1_000).max(1))
        .map(|_| hex_of(&switchboard_core::random_token(32)))
        .collect();
    let mut writer = repo::audit::AuditWriter::new(db.clone());
    let mut conn = db.get().unwrap();
    if let Ok(sql) = std::env::var("AUDIT_BENCH_SQL") {
        use diesel::connection::SimpleConnection;
        conn.batch_execute(&sql).unwrap();
    }
    let start_ms = 1_800_000_000_000_i64;
    let mut n = 0_i64;
    let mut batch = || -> Vec<AuditEvent> {
        (0..per_batch)
            .map(|_| {
                n += 1;
                // About 20,000 records a second.
                let at = start_ms + n / 20;
                AuditEvent {
                    id: switchboard_core::time_ordered_id("aud", at),
                    tenant_id: "ten_bench00000000000000".to_owned(),
                    at,
                    kind: "method_call".to_owned(),
                    action: "get_patient".to_owned(),
                    api_key_id: Some("key_bench0000000000000000".to_owned()),
                    account_id: Some("acc_bench".to_owned()),
                    install_id: Some(format!("ins_bench{:016}", n % 8)),
                    connector_id: Some("canvas".to_owned()),
                    status: 200,
                    code: None,
                    upstream_status: Some(200),
                    duration_ms: Some(1),
                    request_id: Some(switchboard_core::random_token(16)),
                    patient_hash: Some(patients[(n * 7_919) as usize % patients.len()].clone()),
                }
            })
            .collect()
    };
    // The first batch opens the writer's connection; then its PostgreSQL backend is known.
    assert_eq!(writer.insert(&new(&batch())).unwrap(), per_batch);
    let server = server_pids(&mut conn);
    let mut per_record = Vec::with_capacity(batches);
    let mut server_share = Vec::with_capacity(batches);
    for _ in 1..batches {
        let rows = batch();
        let (client0, server0) = (thread_cpu_ns(), cpu_ns(&server));
        assert_eq!(writer.insert(&new(&rows)).unwrap(), per_batch);
        let (client1, server1) = (thread_cpu_ns(), cpu_ns(&server));
        per_record
            .push(((client1 - client0) + (server1 - server0)) as f64 / 1e3 / per_batch as f64);
        server_share.push((server1 - server0) as f64 / 1e3 / per_batch as f64);
    }
    // The second half's mean, median, min and max. The mean as well as the median: this
    // thread's CPU time (schedstat) advances by whole scheduler ticks while it runs
    // uninterrupted, so a batch of a few ms reads as 0, 1 or 2 ticks and the median snaps to a
    // tick over the batch size (4 µs per record at 250 Hz and 1,000 records). The error of each
    // reading is random, so the mean of the second half is not biased.
    let summary = |mut v: Vec<f64>| -> (f64, f64, f64, f64) {
        let mut steady = v.split_off(v.len() / 2);
        let mean = steady.iter().sum::<f64>() / steady.len() as f64;
        steady.sort_by(f64::total_cmp);
        (
            mean,
            steady[steady.len() / 2],
            steady[0],
            steady[steady.len() - 1],
        )
    };
    let (mean, total, lo, hi) = summary(per_record);
    let (_, in_server, _, _) = summary(server_share);
    // SQLite runs in this thread: there is no server share to tell apart.
    let server_part = if server.is_empty() {
        String::new()
    } else {
        format!(", of which the database server processes {in_server:.2}")
    };
    println!(
        "audit insert cost, {}: {batches} batches of {per_batch} records; second half: mean \
         {mean:.2}, median {total:.2} µs CPU/record (min {lo:.2}, max {hi:.2}){server_part}",
        db.backend(),
    );
}

/// On PostgreSQL, the server processes of this database's other connections (the writer's and
/// idle pooled ones); none on SQLite.
fn server_pids(conn: &mut switchboard_db::AnyConnection) -> Vec<i32> {
    #[derive(diesel::QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    use diesel::RunQueryDsl;
    if conn.backend() != switchboard_db::Backend::Postgres {
        return Vec::new();
    }
    diesel::sql_query(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .load::<Pid>(conn)
    .unwrap()
    .into_iter()
    .map(|p| p.pid)
    .collect()
}

/// Nanoseconds the processes `pids` have run on a CPU (Linux `schedstat`).
fn cpu_ns(pids: &[i32]) -> u64 {
    pids.iter()
        .map(|p| schedstat_ns(&format!("/proc/{p}/schedstat")))
        .sum()
}

/// Nanoseconds this thread has run on a CPU.
fn thread_cpu_ns() -> u64 {
    schedstat_ns("/proc/thread-self/schedstat")
}

fn schedstat_ns(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// 64 lowercase hex characters, like a patient hash (any 64 hex digits will do here).
fn hex_of(token: &str) -> String {
    token.bytes().take(32).map(|b| format!("{b:02x}")).collect()
}

/// The trail's text keys compare as bytes on both backends, whatever the PostgreSQL cluster's
/// locale: the same order everywhere, and no strcoll in the indexes every call writes (the
/// columns are `COLLATE "C"` on PostgreSQL; SQLite's BINARY). Ids whose byte order is not a
/// linguistic one (case, `-` and `_`) page in byte order. `PG_LOCALE=en_US.UTF-8` runs this on a
/// cluster where the default collation would order them otherwise.
fn audit_keys_order_by_their_bytes(db: &Db) {
    let mut c = db.get().unwrap();
    let mut ids_in = [
        "aud_b", "aud_B", "aud-c", "aud_A0", "aud_a", "aud.z", "aud_ab",
    ];
    let rows: Vec<AuditEvent> = ids_in
        .iter()
        .map(|id| event("ten_a", id, 50, 200))
        .collect();
    repo::audit::insert_batch(&mut c, &new(&rows)).unwrap();
    ids_in.sort_unstable();
    let page = repo::audit::list_page(&mut c, "ten_a", &AuditFilter::default(), None, 3).unwrap();
    assert_eq!(ids(&page.rows), ids_in[..3]);
    let rest = repo::audit::list_page(
        &mut c,
        "ten_a",
        &AuditFilter::default(),
        page.next.as_ref(),
        10,
    )
    .unwrap();
    assert_eq!(ids(&rest.rows), ids_in[3..]);
    assert_eq!(
        ids(&export_all(&mut c, 0)),
        ids_in,
        "the export walks in the same order"
    );
    if let switchboard_db::AnyConnection::Postgresql(pg) = &mut *c {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct Collation {
            #[diesel(sql_type = diesel::sql_types::Text)]
            column_name: String,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            collation_name: Option<String>,
        }
        let mut keys: Vec<(String, Option<String>)> = diesel::sql_query(
            "SELECT column_name::text AS column_name, collation_name::text AS collation_name \
             FROM information_schema.columns WHERE table_name = 'audit_events' \
             AND column_name IN ('id', 'tenant_id', 'install_id', 'patient_hash')",
        )
        .load::<Collation>(pg)
        .unwrap()
        .into_iter()
        .map(|c| (c.column_name, c.collation_name))
        .collect();
        keys.sort();
        let bytes = Some("C".to_owned());
        assert_eq!(
            keys,
            [
                ("id".to_owned(), bytes.clone()),
                ("install_id".to_owned(), bytes.clone()),
                ("patient_hash".to_owned(), bytes.clone()),
                ("tenant_id".to_owned(), bytes),
            ]
        );
    }
}

/// The query plan of `sql` as text: SQLite's `EXPLAIN QUERY PLAN` details, PostgreSQL's
/// `EXPLAIN` lines.
fn plan(c: &mut switchboard_db::AnyConnection, sql: &str) -> String {
    use diesel::prelude::*;
    use diesel::sql_types::Text;
    #[derive(QueryableByName)]
    struct Sqlite {
        #[diesel(sql_type = Text)]
        detail: String,
    }
    #[derive(QueryableByName)]
    struct Pg {
        #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
        line: String,
    }
    match c {
        switchboard_db::AnyConnection::Sqlite(c) => {
            diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
                .load::<Sqlite>(c)
                .unwrap()
                .into_iter()
                .map(|r| r.detail)
                .collect::<Vec<_>>()
                .join("\n")
        }
        switchboard_db::AnyConnection::Postgresql(c) => diesel::sql_query(format!("EXPLAIN {sql}"))
            .load::<Pg>(c)
            .unwrap()
            .into_iter()
            .map(|r| r.line)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// Each filter of `GET /v1/audit` pages from the index made for it, in `(at, id)` order, and
/// not through the tenant's whole trail. SQLite keeps no statistics unless ANALYZE runs, so its
/// choice rests on the index shapes alone (an index on `(patient_hash, at)` without `id` lost
/// to the primary key, which orders the tenant's trail fully). PostgreSQL plans with the
/// statistics autovacuum keeps, taken here by ANALYZE.
fn audit_filters_read_their_own_index(db: &Db) {
    let mut c = db.get().unwrap();
    let rows: Vec<AuditEvent> = (0..2_000)
        .map(|i| {
            let mut e = event(
                if i % 2 == 0 { "ten_a" } else { "ten_b" },
                &format!("aud_{i:05}"),
                i,
                200,
            );
            e.install_id = Some(format!("ins_{}", i % 40));
            e.patient_hash = (i % 3 != 0).then(|| format!("{:064x}", i % 400));
            e
        })
        .collect();
    repo::audit::insert_batch(&mut c, &new(&rows)).unwrap();
    if let switchboard_db::AnyConnection::Postgresql(pg) = &mut *c {
        use diesel::connection::SimpleConnection;
        pg.batch_execute("ANALYZE audit_events").unwrap();
    }
    let page = "ORDER BY at, id LIMIT 101";
    let patient = plan(
        &mut c,
        &format!(
            "SELECT * FROM audit_events WHERE tenant_id = 'ten_a' AND patient_hash = '{:064x}' {page}",
            6
        ),
    );
    assert!(patient.contains("audit_events_patient_at"), "{patient}");
    let install = plan(
        &mut c,
        &format!(
            "SELECT * FROM audit_events WHERE tenant_id = 'ten_a' AND install_id = 'ins_6' {page}"
        ),
    );
    assert!(install.contains("audit_events_install_at"), "{install}");
    let after = plan(
        &mut c,
        &format!(
            "SELECT * FROM audit_events WHERE tenant_id = 'ten_a' AND patient_hash = '{:064x}' \
             AND at >= 100 AND (at > 100 OR id > 'aud_00100') {page}",
            6
        ),
    );
    assert!(after.contains("audit_events_patient_at"), "{after}");
    let tenant = plan(
        &mut c,
        &format!("SELECT * FROM audit_events WHERE tenant_id = 'ten_a' {page}"),
    );
    // An index in `at` order (the key, or `(at)` when the tenant holds most rows), never a
    // scan of the table sorted whole.
    assert!(
        tenant.contains("Index Scan") || tenant.contains(" INDEX "),
        "{tenant}"
    );
    assert!(
        !tenant.contains("Seq Scan") && !tenant.contains("TEMP B-TREE FOR ORDER BY"),
        "{tenant}"
    );
}
