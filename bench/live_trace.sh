#!/usr/bin/env bash
# Live trace benchmark: traces while the store is being written, as in production.
#
#   bench/live_trace.sh        (DEVICES=1000000 DAYS=14 UPLOAD_CONNECTIONS=12 CASES=20)
#
# 1. builds proxima in release (or uses PROXIMA_BIN); generates DEVICES devices x DAYS
#    days ending today into target/bench-live/store (kept between runs);
# 2. starts `proxima serve` (flush every 10 s) with a users file holding a tracer, an
#    analyst and an ingest user, and registers 2,000 phones over REST for the uploads;
# 3. while wrk keeps UPLOAD_CONNECTIONS connections uploading observations of random
#    MACs (generated and registered) and a client registers 2 new devices a second,
#    traces CASES random generated devices at depth 2 through POST /v1/cases (the
#    server flushes, traces, writes alerts), then the same devices through Flight SQL
#    (ADBC, `trace_contacts(device, now(), 2)`);
# 4. prints request latencies, the server's own trace time (proxima_trace_seconds),
#    observations acknowledged per second during the run, and how many days the
#    lookups had to read whole (proxima_lookup_days_scanned: must be 0).
# BENCHMARKS.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES="${DEVICES:-1000000}"
DAYS="${DAYS:-14}"
CASES="${CASES:-20}"
UPLOAD_CONNECTIONS="${UPLOAD_CONNECTIONS:-12}"
WORK="target/bench-live"
PORT="${PORT:-18090}"
FLIGHT_PORT="${FLIGHT_PORT:-50090}"
started=$SECONDS

if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y wrk; else sudo apt-get install -y wrk; fi
fi
if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
fi
bench/.venv/bin/python -c 'import adbc_driver_flightsql, pyarrow' 2>/dev/null ||
    bench/.venv/bin/pip install --quiet --disable-pip-version-check 'pyarrow>=15' 'adbc-driver-flightsql==1.*' 'adbc-driver-manager==1.*'
if [ -z "${PROXIMA_BIN:-}" ]; then
    cargo build --release --quiet
    PROXIMA_BIN=target/release/proxima
fi
PROXIMA="$PROXIMA_BIN --data $WORK/store"
mkdir -p "$WORK"
if [ ! -d "$WORK/store/observations" ]; then
    echo "== generating $DEVICES devices x $DAYS days (ending today) into $WORK/store"
    t=$SECONDS
    $PROXIMA generate --devices "$DEVICES" --days "$DAYS"
    echo "generated in $((SECONDS - t)) s"
fi
echo "== store: observations $(du -sb "$WORK/store/observations" | cut -f1) bytes, observed_index $(du -sb "$WORK/store/observed_index" | cut -f1) bytes"
rm -f "$WORK/users.toml"
for user in "tracy tracer" "ann analyst" "gate ingest"; do
    set -- $user
    echo "live bench password" | $PROXIMA_BIN user add "$1" --role "$2" --users "$WORK/users.toml" >/dev/null
done
rm -rf "$WORK/wal"
[ -s "$WORK/audit.key" ] || $PROXIMA_BIN audit key --out "$WORK/audit.key" >/dev/null
$PROXIMA serve --users "$WORK/users.toml" --audit-key "$WORK/audit.key" --http "127.0.0.1:$PORT" --flight "127.0.0.1:$FLIGHT_PORT" \
    --wal-dir "$WORK/wal" --device-rate 0 --registration-rate 0 --registration-work 0 --accept-mac --flush-interval 10s > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    grep -q "Flight SQL listening" "$WORK/serve.log" && break
    sleep 0.5
done
URL="http://127.0.0.1:$PORT"
# The operations routes (/metrics) listen on the port after --http's.
OPS="http://127.0.0.1:$((PORT + 1))"
metric() { curl -s "$OPS/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

echo "== registering 2,000 phones for the uploads"
bench/.venv/bin/python bench/ingest_clients.py register "$URL" 2000 "$WORK/tokens.txt" "$WORK/phone_macs.txt"
$PROXIMA sql --format csv -c "SELECT mac FROM devices ORDER BY mac LIMIT 200000" | tail -n +2 > "$WORK/population_macs.txt"
cat "$WORK/phone_macs.txt" "$WORK/population_macs.txt" > "$WORK/macs.txt"
$PROXIMA sql --format csv -c "SELECT DISTINCT observer FROM observations WHERE day >= current_date - INTERVAL '2 days' ORDER BY observer LIMIT 20000" \
    | tail -n +2 | awk -v n="$CASES" 'NR % 997 == 1 && c < n {print; c++}' > "$WORK/cases.txt"
echo "index cases: $(wc -l < "$WORK/cases.txt")"

LOAD_SECONDS=$((60 + CASES * 3))
echo "== load for ${LOAD_SECONDS}s: wrk ($UPLOAD_CONNECTIONS connections, 8 observations a request) and 2 registrations a second"
accepted_before=$(metric proxima_observations_accepted_total)
TOKENS="$WORK/tokens.txt" MACS="$WORK/macs.txt" wrk -t1 -c"$UPLOAD_CONNECTIONS" -d"${LOAD_SECONDS}s" --latency \
    -s bench/ingest_upload.lua "$URL" > "$WORK/wrk.txt" &
WRK=$!
bench/.venv/bin/python bench/live_clients.py trickle "$URL" 2 "$LOAD_SECONDS" 1000000 > "$WORK/trickle.txt" &
TRICKLE=$!
sleep 25 # two flushes under load first
scanned_before=$(metric proxima_lookup_days_scanned)
trace_sum_before=$(metric proxima_trace_seconds_sum)
echo "== $CASES cases through POST /v1/cases"
bench/.venv/bin/python bench/live_clients.py cases "$URL" "tracy:live bench password" "$WORK/cases.txt" | tee "$WORK/cases_out.txt"
echo "server trace time per case (proxima_trace_seconds): $(awk -v a="$trace_sum_before" -v b="$(metric proxima_trace_seconds_sum)" -v n="$CASES" 'BEGIN {printf "%.1f ms on average", (b - a) / n * 1000}')"
echo "== the same devices through Flight SQL (ADBC)"
bench/.venv/bin/python bench/live_clients.py flight "grpc://127.0.0.1:$FLIGHT_PORT" tracy "live bench password" "$WORK/cases.txt" | tee "$WORK/flight_out.txt"
echo "days the lookups read whole during the traces: $(awk -v a="$scanned_before" -v b="$(metric proxima_lookup_days_scanned)" 'BEGIN {print b - a}')"
wait $WRK
wait $TRICKLE
cat "$WORK/trickle.txt"
grep -E "Requests/sec|99%|Non-2xx" "$WORK/wrk.txt" || true
echo "observations acknowledged per second during the load: $(awk -v a="$accepted_before" -v b="$(metric proxima_observations_accepted_total)" -v s="$LOAD_SECONDS" 'BEGIN {printf "%.0f", (b - a) / s}')"
echo "benchmark took $((SECONDS - started)) s"
