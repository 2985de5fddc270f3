"""Insert cost per audit record in SQLite, measured apart (docs/BENCHMARKS.md, "Seventh pass").

The current layout (a row, its primary key and three indexes: the migrations in migrations/sqlite)
against a layout indexed per batch (a row appended by rowid, plus one span per distinct tenant,
install and patient of the batch: its first and last row), and against the rows alone. Records
shaped like the benchmark's, in batches with one transaction each; the writer's pragmas. Prints
the median CPU time of this process per record over the second half of the batches.

    python3 bench/audit_layout.py current|perbatch|bare PATIENTS   # BATCHES=200 ROWS=1000
"""
import os
import pathlib
import secrets
import sqlite3
import sys
import time

LAYOUT = sys.argv[1]          # current | perbatch | bare (the rows alone, no index)
PATIENTS = int(sys.argv[2])   # distinct patients the calls are about
BATCHES, ROWS = int(os.environ.get("BATCHES", 200)), int(os.environ.get("ROWS", 1000))
path = f"/tmp/layout-{LAYOUT}-{os.getpid()}.db"
db = sqlite3.connect(path, isolation_level=None)
db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-8192;")
cols = "id, tenant_id, at, kind, action, api_key_id, account_id, install_id, connector_id, status, code, upstream_status, duration_ms, request_id, patient_hash"
if LAYOUT == "current":
    # The project's own schema: every SQLite migration in order, as the host applies them.
    migrations = pathlib.Path(__file__).resolve().parent.parent / "migrations" / "sqlite"
    for m in sorted(migrations.iterdir()):
        db.executescript((m / "up.sql").read_text())
else:
    db.executescript("""
    CREATE TABLE audit_events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, tenant_id TEXT NOT NULL, at BIGINT NOT NULL, kind TEXT NOT NULL,
      action TEXT NOT NULL, api_key_id TEXT, account_id TEXT, install_id TEXT, connector_id TEXT, status BIGINT NOT NULL,
      code TEXT, upstream_status BIGINT, duration_ms BIGINT, request_id TEXT, patient_hash TEXT);
    CREATE TABLE audit_spans (dim INTEGER NOT NULL, key TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
      first_at BIGINT NOT NULL, last_at BIGINT NOT NULL, PRIMARY KEY (dim, key, first_seq)) WITHOUT ROWID;""")
ins = f"INSERT INTO audit_events ({cols}) VALUES ({','.join('?' * 15)})"
patients = [secrets.token_hex(32) for _ in range(PATIENTS)]
n, seq, start = 0, 0, 1_800_000_000_000
per = []
for b in range(BATCHES):
    rows = []
    for _ in range(ROWS):
        n += 1
        at = start + n // 20
        rows.append((f"aud_{at:012x}{secrets.token_hex(10)}", "ten_bench00000000000000", at, "method_call", "get_patient",
                     "key_bench0000000000000000", "acc_bench", f"ins_bench{n % 8:016}", "canvas", 200, None, 200, 1,
                     secrets.token_urlsafe(16), patients[(n * 7919) % PATIENTS]))
    if LAYOUT == "perbatch":
        spans = {}
        # Computed before the clock starts: in Rust this is a hash map per batch, tens of ns a row.
        first = seq + 1
        seq += len(rows)
        for i, r in enumerate(rows):
            s = first + i
            for dim, key in ((0, r[1]), (1, r[7]), (2, r[14])):
                if key is None: continue
                lo = spans.get((dim, key))
                spans[(dim, key)] = (lo[0] if lo else s, s, lo[2] if lo else r[2], r[2])
        span_rows = [(d, k, v[0], v[1], v[2], v[3]) for (d, k), v in spans.items()]
    t0 = time.process_time()
    db.execute("BEGIN IMMEDIATE")
    db.executemany(ins, rows)
    if LAYOUT == "perbatch":
        db.executemany("INSERT INTO audit_spans VALUES (?,?,?,?,?,?)", span_rows)
    db.execute("COMMIT")
    per.append((time.process_time() - t0) / ROWS * 1e6)
half = sorted(per[BATCHES // 2:])
print(f"{LAYOUT} patients={PATIENTS}: median {half[len(half)//2]:.2f} µs CPU/record (second half of {BATCHES} batches of {ROWS})")
db.close()
for suf in ("", "-wal", "-shm"):
    try: os.remove(path + suf)
    except FileNotFoundError: pass
