#!/usr/bin/env bash
# Benchmark of a Bulk Data output file streamed through Switchboard (docs/BENCHMARKS.md, "Bulk
# Data file streaming"): a Python upstream (bench/bulk_upstream.py) serves a SIZE_MB NDJSON file
# generated on the fly; Switchboard (release build unless SWITCHBOARD_BIN says otherwise) on
# SQLite, a Medplum client-credentials install pointed at it, kicks off export_group, polls to
# completed, then curl downloads the file through Switchboard. Prints bytes, seconds, MB/s, and
# Switchboard's peak RSS (VmHWM) before and after the download.
#
# Usage: bench/bulk.sh   Environment: SIZE_MB=50, SKIP_BUILD=1, SWITCHBOARD_BIN=path
# Only 127.0.0.1 is contacted; processes and the temp dir are removed on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE_MB=${SIZE_MB:-50}
BIN=${SWITCHBOARD_BIN:-$ROOT/target/release/switchboard}
[ "${SKIP_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release --locked --bin switchboard >&2)
TMP=$(mktemp -d /tmp/switchboard-bulk-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); SB=$(free_port)
python3 "$ROOT/bench/bulk_upstream.py" "$UP" "$SIZE_MB" & PIDS+=($!)
env=(
    "SWITCHBOARD__DATABASE__URL=sqlite://$TMP/sb.db"
    "SWITCHBOARD__SERVER__BIND=127.0.0.1:$SB"
    "SWITCHBOARD__SERVER__PUBLIC_URL=http://127.0.0.1:$SB"
    "SWITCHBOARD__CONNECTORS__DIR=$ROOT/connectors"
    "SWITCHBOARD__SECRETS__KEY_FILE=$TMP/secret.key"
    "SWITCHBOARD__SECURITY__ALLOW_INSECURE_UPSTREAMS=true"
    "SWITCHBOARD__LIMITS__API_KEY_REQUESTS_PER_MINUTE=0"
    "SWITCHBOARD__BULK__POLL_INTERVAL_MS=200"
    "SWITCHBOARD__LOG__LEVEL=warn"
)
KEY=$(cd "$TMP" && env "${env[@]}" "$BIN" tenant create bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
(cd "$TMP" && exec env "${env[@]}" "$BIN" serve >"$TMP/sb.log" 2>&1) & SBPID=$!; PIDS+=($SBPID)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$SB/readyz" >/dev/null && break; sleep 0.1; done
api() { curl -sf -X "$1" "http://127.0.0.1:$SB$2" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' ${3:+-d "$3"}; }
api PUT /v1/connectors/medplum/setup '{"settings":{"client_id":"bench","client_secret":"bench-secret"}}' >/dev/null
api POST /v1/accounts '{"id":"bench","name":"Bench"}' >/dev/null
INS=$(api POST /v1/accounts/bench/installs "{\"connector\":\"medplum\",\"auth_type\":\"oauth2_client_credentials\",\"settings\":{\"base_url\":\"http://127.0.0.1:$UP/\"}}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
JOB=$(api POST "/v1/accounts/bench/installs/$INS/methods/export_group" '{"params":{"id":"bench"}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["status_url"])')
for _ in $(seq 100); do
    state=$(api GET "$JOB" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    [ "$state" = completed ] && break; sleep 0.2
done
[ "$state" = completed ] || { cat "$TMP/sb.log"; echo "job not completed: $state" >&2; exit 1; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$SBPID/status"; }
before=$(hwm)
read -r size secs < <(curl -sf -o /dev/null -w '%{size_download} %{time_total}\n' "http://127.0.0.1:$SB$JOB/files/0" -H "Authorization: Bearer $KEY")
after=$(hwm)
python3 - "$size" "$secs" "$before" "$after" "$BIN" <<'PY'
import sys
size, secs, before, after, binary = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
print(f"binary: {binary}")
print(f"file: {size} bytes ({size/1048576:.1f} MiB) in {secs:.2f} s = {size/1048576/secs:.1f} MiB/s")
print(f"switchboard peak RSS (VmHWM): {before} KiB before, {after} KiB after the download (+{(after-before)/1024:.1f} MiB)")
PY
