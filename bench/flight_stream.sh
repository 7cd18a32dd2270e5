#!/usr/bin/env bash
# Flight SQL streaming benchmark: a query returning 10 million rows, read by the ADBC
# driver batch by batch, while the server's peak resident memory is recorded.
#
#   bench/flight_stream.sh [STORE_DIR]    (default: target/bench-store, made by trace_vs_duckdb.sh)
#
# Installs adbc-driver-flightsql and pyarrow into bench/.venv. PROXIMA_BIN: an already
# built release binary (otherwise it builds one). BENCHMARKS.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE="${1:-target/bench-store}"
ROWS="${ROWS:-10000000}"
if [ ! -d "$STORE/observations" ]; then
    echo "no store at $STORE: run bench/trace_vs_duckdb.sh first (it generates one)" >&2
    exit 1
fi
if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
fi
bench/.venv/bin/python -c 'import adbc_driver_flightsql, pyarrow' 2>/dev/null ||
    bench/.venv/bin/pip install --quiet --disable-pip-version-check 'adbc-driver-flightsql==1.*' 'pyarrow>=18'
if [ -z "${PROXIMA_BIN:-}" ]; then
    cargo build --release --quiet
    PROXIMA_BIN=target/release/proxima
fi

OUT=$(mktemp)
"$PROXIMA_BIN" --data "$STORE" serve --flight 127.0.0.1:0 > "$OUT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -f "$OUT"' EXIT
for _ in $(seq 100); do
    grep -q "^user tracer" "$OUT" && break
    sleep 0.1
done
URI=$(sed -n 's/^Flight SQL listening on \([^ ]*\).*/\1/p' "$OUT")
PASSWORD=$(sed -n 's/^user tracer, password \([^ ]*\).*/\1/p' "$OUT")
echo "server pid $SERVER at $URI; resident memory before the query: $(grep VmRSS /proc/$SERVER/status | awk '{print $2 / 1024 " MiB"}')"

bench/.venv/bin/python - "$URI" "$PASSWORD" "$ROWS" <<'PY'
import sys, time
import adbc_driver_flightsql.dbapi as flight_sql
uri, password, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
with flight_sql.connect(uri, db_kwargs={"username": "tracer", "password": password}) as conn:
    cur = conn.cursor()
    started = time.perf_counter()
    cur.execute(f"SELECT * FROM observations LIMIT {rows}")
    reader = cur.fetch_record_batch()
    total = batches = 0
    for batch in reader:
        total += batch.num_rows
        batches += 1
    elapsed = time.perf_counter() - started
print(f"received {total} rows in {batches} batches in {elapsed:.1f} s ({total / elapsed / 1e6:.2f} M rows/s)")
PY
echo "server peak resident memory (VmHWM): $(grep VmHWM /proc/$SERVER/status | awk '{print $2 / 1024 " MiB"}')"
