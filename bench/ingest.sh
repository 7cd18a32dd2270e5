#!/usr/bin/env bash
# Ingest benchmark: REST uploads and bulk Arrow IPC against a real `proxima serve`.
#
#   bench/ingest.sh            (DEVICES=100000 SECONDS_LOAD=60 CONNECTIONS=64 by default;
#                               KEEP_DEVICES=1 reuses the last run's devices and store;
#                               OBSERVED=ids: phones report hearing rotating identifiers;
#                               NO_ROLLUP=1: flushes skip the analysts' contact rollup, to
#                               measure what keeping it costs)
#
# 1. builds proxima in release (or uses PROXIMA_BIN) and starts `proxima serve` on an
#    empty store in target/bench-ingest, with a users file holding an `ingest` user;
# 2. registers DEVICES devices through POST /v1/devices (8 concurrent clients; the server
#    asks for no proof of work, which is the phone's cost, measured apart);
# 3. runs wrk (Debian package `wrk`; installed with apt-get if missing) for
#    SECONDS_LOAD seconds over CONNECTIONS keep-alive connections, each request one
#    random device uploading 8 observations of random registered MACs, or with
#    OBSERVED=ids of the devices' current rotating identifiers (fetched once through
#    GET /v1/ephemeral-ids) (bench/ingest_upload.lua), and prints requests/s,
#    observations/s and latency percentiles (load generator on the same 2 cores);
# 4. sends BULK_REQUESTS bulk requests of 1,000,000 rows as Arrow IPC and prints rows/s;
# 5. stops the server (SIGTERM: final flush) and counts the stored observations.
# BENCHMARKS.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES="${DEVICES:-100000}"
SECONDS_LOAD="${SECONDS_LOAD:-60}"
CONNECTIONS="${CONNECTIONS:-64}"
BULK_REQUESTS="${BULK_REQUESTS:-10}"
WORK="target/bench-ingest"
PORT="${PORT:-18080}"
# Requests a minute per device (the server's default is 120). With 100,000 devices the
# load is about 8 requests a minute per device; short runs with few devices set 0.
DEVICE_RATE="${DEVICE_RATE:-120}"

if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y wrk; else sudo apt-get install -y wrk; fi
fi
if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
fi
bench/.venv/bin/python -c 'import pyarrow' 2>/dev/null ||
    bench/.venv/bin/pip install --quiet --disable-pip-version-check 'pyarrow>=15'
if [ -z "${PROXIMA_BIN:-}" ]; then
    cargo build --release --quiet
    PROXIMA_BIN=target/release/proxima
fi

# KEEP_DEVICES=1 reuses the devices (and store) of the previous run.
if [ "${KEEP_DEVICES:-0}" != 1 ] || [ ! -s "$WORK/tokens.txt" ]; then
    KEEP_DEVICES=0
    rm -rf "$WORK" && mkdir -p "$WORK"
    echo "bench password 0001" | "$PROXIMA_BIN" user add gate --role ingest --users "$WORK/users.toml" >/dev/null
fi
[ -s "$WORK/audit.key" ] || "$PROXIMA_BIN" audit key --out "$WORK/audit.key" >/dev/null
[ -s "$WORK/id.key" ] || "$PROXIMA_BIN" id-key new --out "$WORK/id.key" >/dev/null
"$PROXIMA_BIN" --data "$WORK/store" serve --users "$WORK/users.toml" --audit-key "$WORK/audit.key" \
    --http "127.0.0.1:$PORT" --flight 127.0.0.1:0 --device-rate "$DEVICE_RATE" --registration-rate 0 --registration-work 0 --accept-mac --id-key "$WORK/id.key" \
    ${NO_ROLLUP:+--no-rollup} > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q "REST listening" "$WORK/serve.log" && break
    sleep 0.2
done
URL="http://127.0.0.1:$PORT"
# The operations routes (/metrics) listen on the port after --http's.
OPS="http://127.0.0.1:$((PORT + 1))"

if [ "$KEEP_DEVICES" = 1 ]; then
    echo "== reusing $(wc -l < "$WORK/tokens.txt") registered devices"
else
    echo "== registering $DEVICES devices"
    bench/.venv/bin/python bench/ingest_clients.py register "$URL" "$DEVICES" "$WORK/tokens.txt" "$WORK/macs.txt"
fi

HEARD="$WORK/macs.txt"
if [ "${OBSERVED:-macs}" = ids ]; then
    bench/.venv/bin/python bench/ingest_clients.py ids "$URL" "$WORK/tokens.txt" "$WORK/ids.txt"
    HEARD="$WORK/ids.txt"
fi
echo "== uploads (${OBSERVED:-macs} heard): wrk, 2 threads, $CONNECTIONS connections, ${SECONDS_LOAD}s, 8 observations per request"
cpu_seconds() { awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$1/stat"; }
sys_seconds() { awk '{printf "%.1f", $15 / 100}' "/proc/$1/stat"; }
accepted() { curl -s "$OPS/metrics" | awk '/^proxima_observations_accepted_total/ {print $2}'; }
before=$(cpu_seconds $SERVER); sys_before=$(sys_seconds $SERVER)
accepted_before=$(accepted)
TOKENS="$WORK/tokens.txt" MACS="$HEARD" wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_LOAD}s" --latency \
    -s bench/ingest_upload.lua "$URL" | tee "$WORK/wrk.txt"
echo "server CPU during the load: $(awk -v a="$before" -v b="$(cpu_seconds $SERVER)" -v s="$SECONDS_LOAD" 'BEGIN {printf "%.2f cores", (b - a) / s}'), of which kernel $(awk -v a="$sys_before" -v b="$(sys_seconds $SERVER)" -v s="$SECONDS_LOAD" 'BEGIN {printf "%.2f", (b - a) / s}')"
echo "observations acknowledged per second (server's counter): $(awk -v a="$accepted_before" -v b="$(accepted)" -v s="$SECONDS_LOAD" 'BEGIN {printf "%.0f", (b - a) / s}')"
if grep -q "Non-2xx" "$WORK/wrk.txt"; then echo "WARNING: some requests were refused (see above)"; fi

sleep 12 # let the flush of the upload phase finish first
echo "== bulk: $BULK_REQUESTS requests of 1,000,000 rows (Arrow IPC)"
bench/.venv/bin/python bench/ingest_clients.py bulk "$URL" "gate:bench password 0001" "$WORK/tokens.txt.uuids" 1000000 "$BULK_REQUESTS"

echo "== metrics"
curl -s "$OPS/metrics" | grep -E '^proxima_(observations_accepted_total|wal_sync_seconds_(sum|count)|files_flushed_total|rows_flushed_total)' || true
kill -TERM $SERVER
wait $SERVER || true
trap - EXIT
stored=$("$PROXIMA_BIN" --data "$WORK/store" sql --command "SELECT count(*) FROM observations" | sed -n 4p | tr -d '| ')
echo "== stored after the final flush: $stored observations"
