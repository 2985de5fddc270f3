#!/usr/bin/env bash
# Benchmark of the method-call hot path (docs/BENCHMARKS.md, "HTTP hot path").
#
# In one run on one machine it starts
#   1. a static FHIR upstream (nginx: a ~3.5 KB Patient, a ~43 KB searchset Bundle of Patients
#      and a ~200 KB searchset Bundle of 100 Observations from crates/switchboard-testkit/fixtures,
#      401 without the right bearer token),
#   2. a reference hop (nginx proxy_pass with keep-alive to 1.),
#   3. the floor (bench/floor, release build): a bare actix-web + reqwest pass-through
#      taking the same requests as Switchboard, with none of its work (no database, audit,
#      metrics, limits): the cost of the fixed stack and the kernel, which Switchboard cannot go below,
#   4. Switchboard (release build) with a warm canvas static_bearer install pointed at 1.,
#      first on SQLite, then on a throwaway PostgreSQL cluster,
# drives each with wrk at 1, 32 and 256 connections, and prints req/s, p50, p99, Switchboard's
# peak RSS (VmHWM) and the issue-14 targets with PASS/FAIL (and issue 13's audit on vs off).
# search_observations (the 100-entry Bundle, issue 12) is measured at 32 connections only (when
# CONNECTIONS has 32) and its ratio to the hop is reported without a verdict.
# Switchboard gets what a workflow sends: POST with a JSON body and an API key over keep-alive
# connections, through the whole middleware stack, with the audit trail on and the per-key rate
# limiter on (at a rate the load never reaches, so it is checked on every call but refuses none).
#
# Usage: bench/run.sh            (from anywhere; needs root or pre-installed nginx/wrk/postgresql)
# Environment (all optional):
#   DURATION=10         seconds per measurement
#   WARMUP=1            seconds of unrecorded load before each measurement (0: none)
#   CONNECTIONS="1 32 256"
#   BACKENDS="sqlite postgres"
#   TARGETS="upstream hop floor switchboard"   (a subset skips the others, e.g. to profile one)
#   THREADS=2           most wrk threads (never more than connections)
#   NGINX_WORKERS=auto  worker_processes of both nginx instances (auto = one per core)
#   SB_WORKERS=0        Switchboard server.workers (0 = one per core)
#   SKIP_BUILD=1        do not run cargo build (use SWITCHBOARD_BIN or target/release/switchboard,
#                       and FLOOR_BIN or target/release/floor)
#   INSTALL_DEPS=0      never apt-get install missing tools (fail instead)
#   OUT_DIR=...         where raw wrk output and report.md go (default bench/out/<UTC time>/)
#   STRICT=1            exit 1 when a target is missed
#   AUDIT=on            the audit trail: on, off, or both (each round runs Switchboard with the
#                       audit on, then again with it off at 32 connections: issue 13's target)
#   ROUNDS=1            repeat everything; the report shows the median and the spread (min-max)
#   CALLGRIND=0         1: run Switchboard under valgrind's callgrind, instrumented only while
#                       wrk measures it, and report instructions per request (repeatable on a
#                       shared machine, unlike req/s); the dumps go to OUT_DIR (callgrind_annotate
#                       them). Slow: use it with TARGETS=switchboard and one connection count.
#   PROFILE=0           1: perf record (call graphs) of Switchboard (and of the floor) during
#                       get_patient at PROFILE_CONNS (default 32) connections (audit as set, first round);
#                       perf.data and, with inferno on the PATH, a flame graph SVG go to OUT_DIR
#   PG_LOCALE=C         the PostgreSQL cluster's locale (e.g. en_US.UTF-8, if the system has it:
#                       text compares through strcoll, as on many production clusters)
#   PG_CPUS=""          e.g. 1: PostgreSQL runs on these CPUs (taskset list) and everything else
#                       (load generator, nginx, Switchboard) on the others: the database on
#                       cores of its own, as a production deployment's separate database server.
#                       Empty: everything shares every core
# Only 127.0.0.1 is ever contacted. Every process and temp directory is removed on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR="$ROOT/bench"
FIXTURES="$ROOT/crates/switchboard-testkit/fixtures"

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-"1 32 256"}
TARGETS=${TARGETS:-"upstream hop floor switchboard"}
BACKENDS=${BACKENDS:-"sqlite postgres"}
THREADS=${THREADS:-2}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
SB_WORKERS=${SB_WORKERS:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
INSTALL_DEPS=${INSTALL_DEPS:-1}
STRICT=${STRICT:-0}
AUDIT=${AUDIT:-on}
ROUNDS=${ROUNDS:-1}
PROFILE=${PROFILE:-0}
PROFILE_CONNS=${PROFILE_CONNS:-32}
CALLGRIND=${CALLGRIND:-0}
PG_LOCALE=${PG_LOCALE:-C}
PG_CPUS=${PG_CPUS:-}
case $AUDIT in
on) AUDIT_MODES="on" ;;
off) AUDIT_MODES="off" ;;
both) AUDIT_MODES="on off" ;;
*) echo "error: AUDIT must be on, off or both" >&2; exit 1 ;;
esac
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT_DIR:-$BENCH_DIR/out/$STAMP}

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Processes and temp dirs, cleaned up on any exit.
PIDS=()
PG_CTL=""
PG_DATA=""
# PG_CPUS: this script (and so all it starts but PostgreSQL) moves to the other CPUs.
HOST_CPUS=""
if [ -n "$PG_CPUS" ]; then
    HOST_CPUS=$(python3 - "$PG_CPUS" "$(nproc)" <<'PY'
import sys
pg = set()
for part in sys.argv[1].split(","):
    lo, _, hi = part.partition("-")
    pg.update(range(int(lo), int(hi or lo) + 1))
print(",".join(str(c) for c in range(int(sys.argv[2])) if c not in pg))
PY
    ) || die "PG_CPUS=$PG_CPUS is not a CPU list"
    [ -n "$HOST_CPUS" ] || die "PG_CPUS=$PG_CPUS leaves no CPU for the rest"
    taskset -pc "$HOST_CPUS" $$ >/dev/null || die "taskset failed"
fi
TMP=$(mktemp -d /tmp/switchboard-bench.XXXXXX)

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop_pid() {
    local pid=$1 _
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_postgres() {
    if [ -n "$PG_DATA" ] && [ -n "$PG_CTL" ]; then
        as_postgres "$PG_CTL" stop -D "$PG_DATA" -m immediate -w >/dev/null 2>&1 || true
    fi
    PG_DATA=""
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    stop_postgres
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Tools.
need_pkgs=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if [[ " $BACKENDS " == *" postgres "* ]] && [ -z "${PG_BIN:-}" ] &&
    ! ls -d /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need_pkgs+=(postgresql)
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    if [ "$INSTALL_DEPS" != 1 ] || [ "$(id -u)" != 0 ]; then
        die "missing ${need_pkgs[*]}: install them (apt-get install ${need_pkgs[*]}) or run as root"
    fi
    log "installing ${need_pkgs[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

# Waits until GET url answers (any HTTP status); $2 = what, for the error.
wait_http() {
    local url=$1 what=$2 _
    for _ in $(seq 300); do
        if curl -s -o /dev/null --max-time 1 "$url"; then return 0; fi
        sleep 0.1
    done
    die "$what did not come up at $url"
}

# ---------------------------------------------------------------------------------------------
# Build.
BIN=${SWITCHBOARD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/switchboard}
FLOOR_BIN=${FLOOR_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/floor}
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }
if [ "$SKIP_BUILD" != 1 ]; then
    log "building: cargo build --release --bin switchboard"
    (cd "$ROOT" && cargo build --release --bin switchboard >&2)
    if has_target floor; then
        log "building: cargo build --release -p switchboard-bench-floor"
        (cd "$ROOT" && cargo build --release -p switchboard-bench-floor >&2)
    fi
fi
[ -x "$BIN" ] || die "no binary at $BIN"
if has_target floor; then [ -x "$FLOOR_BIN" ] || die "no floor binary at $FLOOR_BIN (TARGETS without floor skips it)"; fi

mkdir -p "$OUT/raw"
RESULTS="$OUT/results.tsv"
: >"$RESULTS"
LUA="$BENCH_DIR/wrk.lua"
ulimit -n 65536 2>/dev/null || true
chmod 755 "$TMP"

# ---------------------------------------------------------------------------------------------
# nginx: the static upstream (#1) and the reference hop (#2).
TOKEN="bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
NG="$TMP/nginx"
mkdir -p "$NG/www" "$NG/tmp"
cp "$FIXTURES/patient.json" "$FIXTURES/bundle-43k.json" "$FIXTURES/observation-bundle-100.json" "$NG/www/"
chmod -R a+rX "$NG"
UP_PORT=$(free_port)
HOP_PORT=$(free_port)

render() { # template output port
    sed -e "s|@PREFIX@|$NG|g" -e "s|@WORKERS@|$NGINX_WORKERS|g" -e "s|@TOKEN@|$TOKEN|g" \
        -e "s|@PORT@|$3|g" -e "s|@UPSTREAM_PORT@|$UP_PORT|g" "$1" >"$2"
}
render "$BENCH_DIR/nginx-upstream.conf.in" "$NG/upstream.conf" "$UP_PORT"
render "$BENCH_DIR/nginx-hop.conf.in" "$NG/hop.conf" "$HOP_PORT"
"$NGINX" -t -q -p "$NG" -c "$NG/upstream.conf" -e "$NG/upstream-error.log" ||
    die "nginx rejected upstream.conf"
"$NGINX" -p "$NG" -c "$NG/upstream.conf" -e "$NG/upstream-error.log" &
UP_MASTER=$!
PIDS+=("$UP_MASTER")
"$NGINX" -p "$NG" -c "$NG/hop.conf" -e "$NG/hop-error.log" &
HOP_MASTER=$!
PIDS+=("$HOP_MASTER")

UP_BASE="http://127.0.0.1:$UP_PORT/fhir/R4"
HOP_BASE="http://127.0.0.1:$HOP_PORT/fhir/R4"
wait_http "$UP_BASE/Patient/pat-0001" "nginx upstream"
wait_http "$HOP_BASE/Patient/pat-0001" "nginx hop"

check_status() { # url expected [auth]
    local code
    if [ -n "${3:-}" ]; then
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $3" "$1")
    else
        code=$(curl -s -o /dev/null -w '%{http_code}' "$1")
    fi
    [ "$code" = "$2" ] || die "$1 answered $code, expected $2"
}
check_status "$UP_BASE/Patient/pat-0001" 401
check_status "$UP_BASE/Patient/pat-0001" 200 "$TOKEN"
check_status "$UP_BASE/Patient?family=x" 200 "$TOKEN"
check_status "$HOP_BASE/Patient/pat-0001" 401
check_status "$HOP_BASE/Patient?family=x" 200 "$TOKEN"
# search_observations (issue 12): the same query from the direct/hop runs and, as method params,
# from Switchboard's.
OBS_QUERY="patient=pat-0001&category=vital-signs,laboratory&_count=100"
OBS_BODY='{"params":{"patient":"pat-0001","category":"vital-signs,laboratory","_count":100}}'
check_status "$UP_BASE/Observation?$OBS_QUERY" 401
check_status "$UP_BASE/Observation?$OBS_QUERY" 200 "$TOKEN"
check_status "$HOP_BASE/Observation?$OBS_QUERY" 200 "$TOKEN"

# ---------------------------------------------------------------------------------------------
# The floor: the same request shape as Switchboard's (POST, JSON body, API key), one process for
# the whole run (it has no database).
FLOOR_PID=""
FLOOR_URL=""
FLOOR_KEY="floor-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
if has_target floor; then
    FLOOR_PORT=$(free_port)
    "$FLOOR_BIN" "127.0.0.1:$FLOOR_PORT" "$UP_BASE" "$TOKEN" "$FLOOR_KEY" >"$TMP/floor.log" 2>&1 &
    FLOOR_PID=$!
    PIDS+=("$FLOOR_PID")
    FLOOR_URL="http://127.0.0.1:$FLOOR_PORT/v1/accounts/a/installs/i/methods"
    wait_http "http://127.0.0.1:$FLOOR_PORT/" "the floor"
    r=$(curl -s -X POST -H "Authorization: Bearer $FLOOR_KEY" -H 'Content-Type: application/json' \
        --data '{"params":{"id":"pat-0001"}}' "$FLOOR_URL/get_patient")
    [[ "$r" == '{"status":200,"data":{'* ]] || die "the floor's get_patient failed: ${r:0:200}"
fi

# ---------------------------------------------------------------------------------------------
# Switchboard.
SB_PID=""
SB_PORT=""
API_KEY=""
ACCOUNT=bench-clinic
INSTALL=""

api() { # method path [body] -> prints body, fails unless 2xx
    local out code
    out=$(curl -s -X "$1" -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} -w '\n%{http_code}' "http://127.0.0.1:$SB_PORT$2")
    code=${out##*$'\n'}
    out=${out%$'\n'*}
    [[ "$code" == 2* ]] || die "$1 $2 answered $code: $out"
    printf '%s' "$out"
}

SB_STARTS=0
start_switchboard() { # backend database_url audit(true|false)
    local backend=$1 db_url=$2 audit=$3
    SB_STARTS=$((SB_STARTS + 1))
    local data="$TMP/sb-$backend-$SB_STARTS"
    mkdir -p "$data"
    SB_PORT=$(free_port)
    local env=(
        "SWITCHBOARD__DATABASE__URL=$db_url"
        "SWITCHBOARD__SERVER__BIND=127.0.0.1:$SB_PORT"
        "SWITCHBOARD__SERVER__PUBLIC_URL=http://127.0.0.1:$SB_PORT"
        "SWITCHBOARD__SERVER__WORKERS=$SB_WORKERS"
        "SWITCHBOARD__CONNECTORS__DIR=$ROOT/connectors"
        "SWITCHBOARD__SECRETS__KEY_FILE=$data/secret.key"
        "SWITCHBOARD__SECURITY__ALLOW_INSECURE_UPSTREAMS=true"
        # One key drives the whole load: the per-key limiter still runs on every call (a token
        # bucket lookup), at a rate far above what the load reaches.
        "SWITCHBOARD__LIMITS__API_KEY_REQUESTS_PER_MINUTE=1000000000"
        "SWITCHBOARD__LIMITS__API_KEY_BURST=1000000"
        "SWITCHBOARD__AUDIT__ENABLED=$audit"
        "SWITCHBOARD__LOG__LEVEL=warn"
    )
    local created
    created=$(cd "$data" && env -u RUST_LOG -u SWITCHBOARD_ENV "${env[@]}" "$BIN" tenant create bench 2>>"$data/switchboard.log")
    API_KEY=$(printf '%s' "$created" | sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p')
    [ -n "$API_KEY" ] || die "tenant create printed no api_key"
    local wrap=()
    if [ "$CALLGRIND" = 1 ]; then
        command -v valgrind >/dev/null 2>&1 || die "CALLGRIND=1 needs valgrind"
        wrap=(valgrind --tool=callgrind --instr-atstart=no
            "--callgrind-out-file=$OUT/callgrind.$backend-$SB_STARTS.out")
    fi
    (cd "$data" && exec env -u RUST_LOG -u SWITCHBOARD_ENV "${env[@]}" "${wrap[@]}" "$BIN" serve >>"$data/switchboard.log" 2>&1) &
    SB_PID=$!
    PIDS+=("$SB_PID")
    wait_http "http://127.0.0.1:$SB_PORT/healthz" "switchboard ($backend)"

    # A warm install through the real API: account, canvas static_bearer install carrying its
    # own token and FHIR base, one call of each method.
    api POST /v1/accounts "{\"id\":\"$ACCOUNT\",\"name\":\"Bench Clinic\"}" >/dev/null
    local install
    install=$(api POST "/v1/accounts/$ACCOUNT/installs" \
        "{\"connector\":\"canvas\",\"auth_type\":\"static_bearer\",\"settings\":{\"api_token\":\"$TOKEN\",\"fhir_base_url\":\"$UP_BASE/\"}}")
    INSTALL=$(printf '%s' "$install" | sed -n 's/.*"id":"\(ins_[^"]*\)".*/\1/p')
    [ -n "$INSTALL" ] || die "install creation returned no id: $install"
    printf '%s' "$install" | grep -q '"status":"authorized"' || die "install not authorized: $install"
    local r
    r=$(api POST "/v1/accounts/$ACCOUNT/installs/$INSTALL/methods/get_patient" '{"params":{"id":"pat-0001"}}')
    [[ "$r" == '{"status":200,"data":{'* ]] || die "get_patient warm-up failed: ${r:0:200}"
    r=$(api POST "/v1/accounts/$ACCOUNT/installs/$INSTALL/methods/search_patients" '{"params":{"family":"x"}}')
    [[ "$r" == '{"status":200,"data":{'* ]] || die "search_patients warm-up failed: ${r:0:200}"
    r=$(api POST "/v1/accounts/$ACCOUNT/installs/$INSTALL/methods/search_observations" "$OBS_BODY")
    [[ "$r" == '{"status":200,"data":{'* ]] || die "search_observations warm-up failed: ${r:0:200}"
    log "switchboard ($backend, audit $audit) pid $SB_PID on 127.0.0.1:$SB_PORT, install $INSTALL warm"
}

stop_switchboard() {
    [ -n "$SB_PID" ] || return 0
    stop_pid "$SB_PID"
    local keep=() pid
    for pid in "${PIDS[@]}"; do [ "$pid" = "$SB_PID" ] || keep+=("$pid"); done
    PIDS=("${keep[@]}")
    SB_PID=""
}

vm_kb() { # pid field -> kB
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

start_postgres() {
    local bin=${PG_BIN:-}
    if [ -z "$bin" ]; then
        bin=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    [ -x "$bin/initdb" ] || die "no PostgreSQL binaries in $bin (set PG_BIN)"
    PG_CTL="$bin/pg_ctl"
    local dir="$TMP/pg"
    mkdir -p "$dir/data" "$dir/sock"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
    as_postgres "$bin/initdb" -D "$dir/data" --auth=trust -U postgres --encoding=UTF8 \
        --locale="$PG_LOCALE" --no-sync >"$dir/initdb.log" 2>&1 || die "initdb failed: $(cat "$dir/initdb.log")"
    local port
    port=$(free_port)
    PG_DATA="$dir/data"
    local pin=()
    [ -n "$PG_CPUS" ] && pin=(taskset -c "$PG_CPUS")
    as_postgres "${pin[@]}" "$PG_CTL" start -D "$dir/data" -l "$dir/postgres.log" -w -t 60 -o \
        "-p $port -c listen_addresses=127.0.0.1 -k $dir/sock -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB" \
        >/dev/null || die "PostgreSQL did not start: $(cat "$dir/postgres.log")"
    PG_PSQL="$bin/psql"
    PG_PORT=$port
    PG_VERSION=$("$bin/postgres" --version | awk '{print $3}')
}

# A fresh database in the running cluster for each Switchboard start.
PG_DBS=0
pg_database() {
    PG_DBS=$((PG_DBS + 1))
    local name="switchboard_bench_$PG_DBS"
    as_postgres "$PG_PSQL" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc \
        "CREATE DATABASE $name" >/dev/null
    PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/$name"
}

# ---------------------------------------------------------------------------------------------
# Load.
kv() { # line key
    printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}

# CPU time (utime + stime, all threads) of the given processes and their children, in ticks.
# Voluntary context switches (a thread blocking: parking, waiting for a wake-up) of every
# thread of PID so far. Per request this counts the wake-ups a call costs, whatever else runs
# on the machine (involuntary switches, which grow with the load, are left out).
voluntary_switches() { # pid
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ { n += $2 } END { print n + 0 }'
}

cpu_ticks() {
    local pids=("$@") p
    for p in "$@"; do
        # shellcheck disable=SC2207
        pids+=($(pgrep -P "$p" || true))
    done
    for p in "${pids[@]}"; do
        sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null || true
    done | awk '{ t += $12 + $13 } END { print t + 0 }'
}
CLK_TCK=$(getconf CLK_TCK)

run_wrk() { # backend label conns method url body auth server-pid
    local backend=$1 label=$2 conns=$3 method=$4 url=$5 body=$6 auth=$7 server=$8
    local target=${label%%.*}
    [ "$target" = sb_audit_off ] && target=switchboard
    [[ " $TARGETS " == *" $target "* ]] || return 0
    local threads=$((conns < THREADS ? conns : THREADS))
    local raw="$OUT/raw/$backend-$label-c$conns-r$ROUND.txt"
    if [ "$WARMUP" != 0 ]; then
        BENCH_METHOD=$method BENCH_BODY=$body BENCH_AUTH=$auth \
            wrk -t"$threads" -c"$conns" -d"${WARMUP}s" --timeout 10s -s "$LUA" "$url" >/dev/null 2>&1 || true
    fi
    local perf_pid=""
    if [ "$PROFILE" = 1 ] && [ "$ROUND" = 1 ] && [ "$conns" = "$PROFILE_CONNS" ] &&
        [[ "$label" == switchboard.get_patient || "$label" == sb_audit_off.get_patient || "$label" == floor.get_patient ]]; then
        command -v perf >/dev/null 2>&1 || die "PROFILE=1 needs perf (apt-get install linux-perf)"
        # DWARF call graphs: the release build keeps .eh_frame and its symbols, no frame pointers.
        perf record -q -F 499 --call-graph dwarf,16384 -p "$server" -o "$OUT/perf-$backend-$label.data" \
            >"$OUT/perf-$backend-$label.log" 2>&1 &
        perf_pid=$!
        sleep 0.5
    fi
    local cg=""
    if [ "$CALLGRIND" = 1 ] && [ "$server" = "$SB_PID" ]; then
        cg=$(ls "$OUT"/callgrind.*.out* 2>/dev/null | wc -l)
        callgrind_control -z "$server" >/dev/null && callgrind_control -i on "$server" >/dev/null
    fi
    local cpu0 cpu1 vcs0 vcs1 db0=0 db1=0 pg=""
    # PostgreSQL's own CPU (the postmaster and its backends) while Switchboard is measured: the
    # database's share of a call (mostly the audit trail's inserts) on the same cores.
    if [ "$backend" = postgres ] && [ "$server" = "$SB_PID" ] && [ -r "$PG_DATA/postmaster.pid" ]; then
        pg=$(head -n 1 "$PG_DATA/postmaster.pid")
        db0=$(cpu_ticks "$pg")
    fi
    cpu0=$(cpu_ticks "$server")
    vcs0=$(voluntary_switches "$server")
    BENCH_METHOD=$method BENCH_BODY=$body BENCH_AUTH=$auth \
        wrk -t"$threads" -c"$conns" -d"${DURATION}s" --timeout 10s --latency -s "$LUA" "$url" >"$raw" 2>&1 ||
        die "wrk failed: $(cat "$raw")"
    cpu1=$(cpu_ticks "$server")
    [ -n "$pg" ] && db1=$(cpu_ticks "$pg")
    vcs1=$(voluntary_switches "$server")
    local ir=0
    if [ -n "$cg" ]; then
        callgrind_control -i off "$server" >/dev/null
        callgrind_control -d "$label-c$conns-r$ROUND" "$server" >/dev/null 2>&1
        local dump
        dump=$(ls -t "$OUT"/callgrind.*.out* | head -n 1)
        ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$dump")
    fi
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        flame_graph "$OUT/perf-$backend-$label.data" "$OUT/flame-$backend-$label.svg"
    fi
    local line
    line=$(grep '^BENCH ' "$raw") || die "no BENCH line in $raw"
    local rps p50 p99 errs
    rps=$(kv "$line" rps)
    p50=$(kv "$line" p50_us)
    p99=$(kv "$line" p99_us)
    errs=$(($(kv "$line" err_connect) + $(kv "$line" err_read) + $(kv "$line" err_write) + $(kv "$line" err_status) + $(kv "$line" err_timeout)))
    # Server CPU per request (µs): much less sensitive to other load on the machine than req/s.
    local cpu
    cpu=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v n="$(kv "$line" requests)" \
        'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')
    local dbcpu
    dbcpu=$(awk -v t=$((db1 - db0)) -v hz="$CLK_TCK" -v n="$(kv "$line" requests)" \
        'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')
    local vcs
    vcs=$(awk -v d=$((vcs1 - vcs0)) -v n="$(kv "$line" requests)" 'BEGIN { printf "%.2f", (n > 0 ? d / n : 0) }')
    local irq
    irq=$(awk -v ir="${ir:-0}" -v n="$(kv "$line" requests)" 'BEGIN { printf "%.0f", (n > 0 ? ir / n : 0) }')
    printf 'run\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$backend" "$label" "$conns" "$rps" "$p50" "$p99" "$errs" "$cpu" "$ROUND" "$irq" "$dbcpu" >>"$RESULTS"
    printf '  %-28s c=%-4s %10s req/s   p50 %7s us   p99 %7s us   cpu %6s us/req%s   wake-ups %5s/req   errors %s%s\n' \
        "$label" "$conns" "$rps" "$p50" "$p99" "$cpu" "${pg:+ (PostgreSQL $dbcpu)}" "$vcs" "$errs" "${cg:+   instructions/req $irq}" >&2
}

# perf.data -> flame graph SVG, when inferno (cargo install inferno) is on the PATH.
flame_graph() { # perf.data svg
    if command -v inferno-collapse-perf >/dev/null 2>&1 && command -v inferno-flamegraph >/dev/null 2>&1; then
        perf script -i "$1" 2>/dev/null | inferno-collapse-perf >"${1%.data}.folded" &&
            inferno-flamegraph --title "$(basename "${2%.svg}")" <"${1%.data}.folded" >"$2" &&
            log "flame graph: $2"
    else
        log "perf data in $1 (install inferno for a flame graph: cargo install inferno)"
    fi
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# One round on one backend: the upstream and the hop (in the first audit mode of the round
# only), Switchboard at every connection count, or with the audit off (AUDIT=both) get_patient
# and search_patients at 32 connections.
bench_backend() { # backend audit-mode
    local backend=$1 mode=$2 c sbl=switchboard conns=$CONNECTIONS
    if [ "$AUDIT" = both ] && [ "$mode" = off ]; then
        sbl=sb_audit_off
        conns=32
    fi
    printf 'load\t%s\tstart\t%s\t%s\n' "$backend" "$(loadavg)" "$ROUND" >>"$RESULTS"
    local sb="http://127.0.0.1:$SB_PORT/v1/accounts/$ACCOUNT/installs/$INSTALL/methods"
    for c in $conns; do
        log "[$backend round $ROUND audit $mode] $c connection(s), ${DURATION}s each (load average $(loadavg))"
        if [ "$sbl" = switchboard ]; then
            run_wrk "$backend" upstream.get_patient "$c" GET "$UP_BASE/Patient/pat-0001" "" "$TOKEN" "$UP_MASTER"
            run_wrk "$backend" hop.get_patient "$c" GET "$HOP_BASE/Patient/pat-0001" "" "$TOKEN" "$HOP_MASTER"
            run_wrk "$backend" floor.get_patient "$c" POST "$FLOOR_URL/get_patient" \
                '{"params":{"id":"pat-0001"}}' "$FLOOR_KEY" "$FLOOR_PID"
        fi
        run_wrk "$backend" $sbl.get_patient "$c" POST "$sb/get_patient" \
            '{"params":{"id":"pat-0001"}}' "$API_KEY" "$SB_PID"
        if [ "$sbl" = switchboard ]; then
            run_wrk "$backend" upstream.search_patients "$c" GET "$UP_BASE/Patient?family=x" "" "$TOKEN" "$UP_MASTER"
            run_wrk "$backend" hop.search_patients "$c" GET "$HOP_BASE/Patient?family=x" "" "$TOKEN" "$HOP_MASTER"
            run_wrk "$backend" floor.search_patients "$c" POST "$FLOOR_URL/search_patients" \
                '{"params":{"family":"x"}}' "$FLOOR_KEY" "$FLOOR_PID"
        fi
        run_wrk "$backend" $sbl.search_patients "$c" POST "$sb/search_patients" \
            '{"params":{"family":"x"}}' "$API_KEY" "$SB_PID"
        if [ "$sbl" = switchboard ]; then
            printf 'rss\t%s\t%s\t%s\t%s\t%s\n' "$backend" "$c" "$(vm_kb "$SB_PID" VmHWM)" "$(vm_kb "$SB_PID" VmRSS)" "$ROUND" >>"$RESULTS"
        fi
    done
    # Issue 12: the ~200 KB Bundle of 100 Observations, at 32 connections only, after the levels
    # above so that their figures and peak RSS readings are unchanged.
    if [ "$sbl" = switchboard ] && [[ " $conns " == *" 32 "* ]]; then
        log "[$backend round $ROUND audit $mode] search_observations (100 entries), 32 connections"
        run_wrk "$backend" upstream.search_observations 32 GET "$UP_BASE/Observation?$OBS_QUERY" "" "$TOKEN" "$UP_MASTER"
        run_wrk "$backend" hop.search_observations 32 GET "$HOP_BASE/Observation?$OBS_QUERY" "" "$TOKEN" "$HOP_MASTER"
        run_wrk "$backend" switchboard.search_observations 32 POST "$sb/search_observations" \
            "$OBS_BODY" "$API_KEY" "$SB_PID"
    fi
    printf 'load\t%s\tend\t%s\t%s\n' "$backend" "$(loadavg)" "$ROUND" >>"$RESULTS"
}

log "output: $OUT"
PG_VERSION=""
ROUND=1
for backend in $BACKENDS; do
    case $backend in
    sqlite) ;;
    postgres) start_postgres ;;
    *) die "unknown backend $backend (sqlite, postgres)" ;;
    esac
    for ROUND in $(seq "$ROUNDS"); do
        for mode in $AUDIT_MODES; do
            audit=true
            [ "$mode" = off ] && audit=false
            case $backend in
            sqlite) start_switchboard sqlite "sqlite://$TMP/sb-sqlite-$((SB_STARTS + 1))/switchboard.db" "$audit" ;;
            postgres)
                pg_database
                start_switchboard postgres "$PG_URL" "$audit"
                ;;
            esac
            bench_backend "$backend" "$mode"
            stop_switchboard
        done
    done
    if [ "$backend" = postgres ]; then stop_postgres; fi
done

# ---------------------------------------------------------------------------------------------
# Report.
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
mem=$(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
# shellcheck disable=SC1091
os=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-}")
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
{
    echo "Run $STAMP: $(nproc) cores ($cpu), $mem, $os, kernel $(uname -r)."
    echo "Switchboard $commit (release), nginx $("$NGINX" -v 2>&1 | sed 's|.*/||') with worker_processes $NGINX_WORKERS, $(wrk -v 2>&1 | head -n 1 | awk '{print "wrk " $2}'), at most $THREADS wrk threads, ${DURATION}s per point after ${WARMUP}s warm-up; Switchboard server.workers=$SB_WORKERS (0 = one per core)${PG_VERSION:+, PostgreSQL $PG_VERSION (locale $PG_LOCALE)}."
    if [ -n "$PG_CPUS" ]; then
        echo "Load generator, nginx and Switchboard share CPUs $HOST_CPUS; PostgreSQL has CPUs $PG_CPUS to itself."
    else
        echo "Load generator, nginx, Switchboard (and PostgreSQL) all share the same cores."
    fi
    echo
    echo "Audit trail: $AUDIT. Rounds: $ROUNDS (each figure is the median over the rounds; [min-max] is the spread of req/s; ratios are the median of the per-round ratios)."
    echo
    awk -F'\t' -v backends="$BACKENDS" -v conns="$CONNECTIONS" -v rounds="$ROUNDS" -v audit="$AUDIT" '
    function lat(us) { return us < 1000 ? sprintf("%d µs", us) : sprintf("%.2f ms", us / 1000) }
    function verdict(ok) { return ok ? "PASS" : "FAIL" }
    # Median of the n values in the global array V (sorted in place).
    function med(n,   i, j, t) {
        for (i = 2; i <= n; i++) { t = V[i]; for (j = i - 1; j >= 1 && V[j] > t; j--) V[j + 1] = V[j]; V[j + 1] = t }
        return n == 0 ? 0 : (n % 2 ? V[(n + 1) / 2] : (V[n / 2] + V[n / 2 + 1]) / 2)
    }
    # Median over the rounds of field arr[k, round].
    function m(arr, k,   r, n) { n = 0; for (r = 1; r <= rounds; r++) if ((k SUBSEP r) in arr) V[++n] = arr[k, r]; return med(n) }
    function has(k,   r) { for (r = 1; r <= rounds; r++) if ((k SUBSEP r) in rps) return 1; return 0 }
    function spread(k,   r, lo, hi, n) {
        n = 0; for (r = 1; r <= rounds; r++) if ((k SUBSEP r) in rps) { v = rps[k, r]; if (!n || v < lo) lo = v; if (!n || v > hi) hi = v; n++ }
        return n > 1 ? sprintf(" [%.0f-%.0f]", lo, hi) : ""
    }
    # Median over the rounds of rps[a] / rps[b]. Tests membership before reading rps[b, r]: in awk
    # reading an element creates it, and has() would then take an unmeasured target as measured.
    function ratio(a, b,   r, n) { n = 0; for (r = 1; r <= rounds; r++) if (((a SUBSEP r) in rps) && ((b SUBSEP r) in rps) && rps[b, r] > 0) V[++n] = rps[a, r] / rps[b, r]; return med(n) }
    # Median over the rounds of p50[a] - p50[b].
    function added(a, b,   r, n) { n = 0; for (r = 1; r <= rounds; r++) if (((a SUBSEP r) in p50) && ((b SUBSEP r) in p50)) V[++n] = p50[a, r] - p50[b, r]; return med(n) }
    $1 == "run" { k = $2 SUBSEP $3 SUBSEP $4; rps[k, $10] = $5; p50[k, $10] = $6; p99[k, $10] = $7; err[k] += $8; cpu[k, $10] = $9; if ($12 != "") db[k, $10] = $12; if ($11 > 0) { ir[k, $10] = $11; anyir = 1 } }
    $1 == "rss" { k = $2 SUBSEP $3; if (!(k in hwm) || $4 > hwm[k]) hwm[k] = $4 }
    $1 == "load" { k = $2 SUBSEP $3; if ($3 == "start" && !(k in load)) load[k] = $4; if ($3 == "end") load[k] = $4 }
    END {
        nb = split(backends, B, " "); nc = split(conns, C, " ")
        split("get_patient search_patients search_observations", M, " ")
        fails = 0
        for (b = 1; b <= nb; b++) {
            be = B[b]
            printf "#### %s\n\n", (be == "sqlite" ? "SQLite" : "PostgreSQL")
            print "| method | conns | upstream direct req/s | nginx hop req/s | Switchboard req/s | SB / hop | direct p50 / p99 | hop p50 / p99 | SB p50 / p99 | SB added p50 | server CPU µs/req hop / SB | errors (d/h/SB) |"
            print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            # Third row group: search_observations (issue 12), measured at 32 connections only.
            for (mm = 1; mm <= 3; mm++) for (c = 1; c <= nc; c++) {
                d = be SUBSEP "upstream." M[mm] SUBSEP C[c]
                h = be SUBSEP "hop." M[mm] SUBSEP C[c]
                s = be SUBSEP "switchboard." M[mm] SUBSEP C[c]
                if (!has(s)) continue
                printf "| %s | %s | %.0f | %.0f%s | %.0f%s | %.2fx | %s / %s | %s / %s | %s / %s | %d µs | %.1f / %.1f | %d/%d/%d |\n", \
                    M[mm], C[c], m(rps, d), m(rps, h), spread(h), m(rps, s), spread(s), ratio(s, h), \
                    lat(m(p50, d)), lat(m(p99, d)), lat(m(p50, h)), lat(m(p99, h)), lat(m(p50, s)), lat(m(p99, s)), \
                    added(s, d), m(cpu, h), m(cpu, s), err[d], err[h], err[s]
            }
            for (mm = 1; mm <= 2; mm++) {
                o = be SUBSEP "sb_audit_off." M[mm] SUBSEP 32
                if (has(o))
                    printf "| %s, audit off | 32 | | | %.0f%s | | | | %s / %s | | / %.1f | //%d |\n", \
                        M[mm], m(rps, o), spread(o), lat(m(p50, o)), lat(m(p99, o)), m(cpu, o), err[o]
            }
            hdr = 0
            for (mm = 1; mm <= 2; mm++) for (c = 1; c <= nc; c++) {
                f = be SUBSEP "floor." M[mm] SUBSEP C[c]
                d = be SUBSEP "upstream." M[mm] SUBSEP C[c]
                h = be SUBSEP "hop." M[mm] SUBSEP C[c]
                s = be SUBSEP "switchboard." M[mm] SUBSEP C[c]
                if (!has(f)) continue
                if (!hdr++) {
                    print "\nThe floor (bench/floor: bare actix-web + reqwest, same requests, none of Switchboard'"'"'s work), same run:\n"
                    print "| method | conns | floor req/s | floor / hop | SB / floor | floor p50 / p99 | floor added p50 | server CPU µs/req floor / SB | errors |"
                    print "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
                }
                printf "| %s | %s | %.0f%s | %.2fx | %.2fx | %s / %s | %d µs | %.1f / %.1f | %d |\n", \
                    M[mm], C[c], m(rps, f), spread(f), ratio(f, h), ratio(s, f), lat(m(p50, f)), lat(m(p99, f)), \
                    added(f, d), m(cpu, f), m(cpu, s), err[f]
            }
            if (anyir) {
                print "\nInstructions per request (callgrind, Switchboard process, medians):\n"
                for (mm = 1; mm <= 2; mm++) for (c = 1; c <= nc; c++) for (t = 1; t <= 2; t++) {
                    s = be SUBSEP (t == 1 ? "switchboard." : "sb_audit_off.") M[mm] SUBSEP C[c]
                    n = 0; for (r = 1; r <= rounds; r++) if ((s SUBSEP r) in ir) V[++n] = ir[s, r]
                    if (n) printf "- %s @%s%s: %.0f\n", M[mm], C[c], (t == 1 ? "" : ", audit off"), med(n)
                }
            }
            printf "\nSwitchboard peak RSS (VmHWM, highest over the rounds) after each level:"
            for (c = 1; c <= nc; c++) if ((be SUBSEP C[c]) in hwm) printf " c=%s %.1f MiB;", C[c], hwm[be SUBSEP C[c]] / 1024
            printf " load average at start %s, at end %s.\n\n", load[be SUBSEP "start"], load[be SUBSEP "end"]

            print "| target (issue 14; issue 13 for the audit) | measured | verdict |"
            print "|---|---:|---|"
            g = be SUBSEP "switchboard.get_patient"; sr = be SUBSEP "switchboard.search_patients"
            if (has(g SUBSEP 32) && has(be SUBSEP "hop.get_patient" SUBSEP 32)) {
                r = ratio(g SUBSEP 32, be SUBSEP "hop.get_patient" SUBSEP 32); ok = r >= 0.6; fails += !ok
                printf "| get_patient @32 (audit %s) >= 0.6x the nginx hop req/s | %.2fx | %s |\n", (audit == "off" ? "off" : "on"), r, verdict(ok)
            }
            if (has(g SUBSEP 32)) {
                v = m(cpu, g SUBSEP 32); ok = v <= 30; fails += !ok
                printf "| get_patient @32: Switchboard CPU per request <= 30 µs | %.1f µs | %s |\n", v, verdict(ok)
            }
            if (has(g SUBSEP 1) && has(be SUBSEP "upstream.get_patient" SUBSEP 1)) {
                a = added(g SUBSEP 1, be SUBSEP "upstream.get_patient" SUBSEP 1); ok = a <= 60; fails += !ok
                printf "| get_patient @1: added p50 over the direct upstream <= 60 µs | %d µs | %s |\n", a, verdict(ok)
            }
            if (has(sr SUBSEP 32) && has(be SUBSEP "hop.search_patients" SUBSEP 32)) {
                r = ratio(sr SUBSEP 32, be SUBSEP "hop.search_patients" SUBSEP 32); ok = r >= 0.5; fails += !ok
                printf "| search_patients @32 >= 0.5x the nginx hop req/s | %.2fx | %s |\n", r, verdict(ok)
            }
            # What the fixed stack allows: the floor against the same targets (reported, not counted).
            fg = be SUBSEP "floor.get_patient"
            if (has(fg SUBSEP 32) && has(be SUBSEP "hop.get_patient" SUBSEP 32))
                printf "| (the floor) get_patient @32 vs the nginx hop req/s; CPU per request | %.2fx; %.1f µs | (reported) |\n", \
                    ratio(fg SUBSEP 32, be SUBSEP "hop.get_patient" SUBSEP 32), m(cpu, fg SUBSEP 32)
            if (has(fg SUBSEP 1) && has(be SUBSEP "upstream.get_patient" SUBSEP 1))
                printf "| (the floor) get_patient @1: added p50 over the direct upstream | %d µs | (reported) |\n", \
                    added(fg SUBSEP 1, be SUBSEP "upstream.get_patient" SUBSEP 1)
            fs = be SUBSEP "floor.search_patients" SUBSEP 32
            if (has(fs) && has(be SUBSEP "hop.search_patients" SUBSEP 32))
                printf "| (the floor) search_patients @32 vs the nginx hop req/s | %.2fx | (reported) |\n", \
                    ratio(fs, be SUBSEP "hop.search_patients" SUBSEP 32)
            # Issue 12 states no numeric target for the 100-entry Bundle: the ratio is reported
            # only (not counted in "Targets missed").
            so = be SUBSEP "switchboard.search_observations" SUBSEP 32; ho = be SUBSEP "hop.search_observations" SUBSEP 32
            if (has(so) && has(ho))
                printf "| search_observations (100 entries) @32 vs the nginx hop req/s (issue 12) | %.2fx (errors %d) | (reported) |\n", ratio(so, ho), err[so]
            if ((be SUBSEP 256) in hwm) {
                mib = hwm[be SUBSEP 256] / 1024; ok = mib <= 100; fails += !ok
                printf "| peak RSS at 256 connections <= 100 MiB | %.1f MiB | %s |\n", mib, verdict(ok)
            }
            for (mm = 1; mm <= 2; mm++) {
                o = be SUBSEP "sb_audit_off." M[mm] SUBSEP 32; on = be SUBSEP "switchboard." M[mm] SUBSEP 32
                if (!has(o) || !has(on)) continue
                r = ratio(on, o); ok = r >= 0.9; fails += !ok
                dbs = (be == "postgres" ? sprintf("; PostgreSQL %.1f / %.1f µs", m(db, on), m(db, o)) : "")
                printf "| %s @32: audit on >= 0.9x audit off req/s (within 10%%) | %.2fx (CPU on / off %.1f / %.1f µs%s) | %s |\n", M[mm], r, m(cpu, on), m(cpu, o), dbs, verdict(ok)
            }
            for (mm = 1; mm <= 2; mm++) for (c = 1; c <= nc; c++) {
                s = be SUBSEP "switchboard." M[mm] SUBSEP C[c]
                if (err[s] > 0) { fails++; printf "| no errors from Switchboard (%s @%s) | %d | FAIL |\n", M[mm], C[c], err[s] }
            }
            print ""
        }
        if (has("sqlite" SUBSEP "switchboard.get_patient" SUBSEP 32) && has("postgres" SUBSEP "switchboard.get_patient" SUBSEP 32)) {
            print "#### PostgreSQL vs SQLite (Switchboard req/s, medians; target: within 10% at 32 connections)\n"
            print "| method | conns | SQLite req/s | PostgreSQL req/s | PG / SQLite | verdict |"
            print "|---|---:|---:|---:|---:|---|"
            for (mm = 1; mm <= 2; mm++) for (c = 1; c <= nc; c++) {
                q = "sqlite" SUBSEP "switchboard." M[mm] SUBSEP C[c]; p = "postgres" SUBSEP "switchboard." M[mm] SUBSEP C[c]
                if (!has(q) || !has(p) || m(rps, q) == 0) continue
                r = m(rps, p) / m(rps, q); ok = r >= 0.9 && r <= 1.1
                # The target is stated at the load point of the other targets (32 connections);
                # the other levels are shown for information.
                if (C[c] == 32) { fails += !ok; v = verdict(ok) } else v = (ok ? "(info) within" : "(info) outside")
                printf "| %s | %s | %.0f | %.0f | %.2fx | %s |\n", M[mm], C[c], m(rps, q), m(rps, p), r, v
            }
            print ""
        }
        printf "Targets missed: %d\n", fails
    }' "$RESULTS"
} >"$OUT/report.md"

cat "$OUT/report.md"
log ""
log "report: $OUT/report.md (raw wrk output in $OUT/raw/)"
if [ "$STRICT" = 1 ] && ! grep -q '^Targets missed: 0$' "$OUT/report.md"; then
    exit 1
fi
