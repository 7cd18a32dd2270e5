#!/usr/bin/env bash
# Flight SQL round trip with the audit: N `SELECT 1` through the ADBC driver, each a
# GetFlightInfo (a decision record, synced) and a DoGet (an intent record, synced, and its
# outcome), as a tracer of a loopback server without a users file (its audit log in the
# store's _audit folder, on this machine's disk). Prints p50, p95 and max in ms, and the
# records the audit log gained.
#
#   bench/flight_roundtrip.sh            (N=300 by default)
#
# Installs adbc-driver-flightsql and pyarrow into bench/.venv. PROXIMA_BIN: an already
# built release binary (otherwise it builds one). BENCHMARKS.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-300}"
WORK="${WORK:-target/bench-roundtrip}"
if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
fi
bench/.venv/bin/python -c 'import adbc_driver_flightsql, pyarrow' 2>/dev/null ||
    bench/.venv/bin/pip install --quiet --disable-pip-version-check 'adbc-driver-flightsql==1.*' 'pyarrow>=18'
if [ -z "${PROXIMA_BIN:-}" ]; then
    cargo build --release --quiet
    PROXIMA_BIN=target/release/proxima
fi

rm -rf "$WORK" && mkdir -p "$WORK"
OUT="$WORK/serve.log"
"$PROXIMA_BIN" --data "$WORK/store" serve --flight 127.0.0.1:0 --http 127.0.0.1:0 > "$OUT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q "^audit log in" "$OUT" && break
    sleep 0.1
done
URI=$(sed -n 's/^Flight SQL listening on \([^ ]*\).*/\1/p' "$OUT")
PASSWORD=$(sed -n 's/^user tracer, password \([^ ]*\).*/\1/p' "$OUT")
records() { find "$WORK/store/_audit/log" -name '*.jsonl' -exec cat {} + | wc -l; }
before=$(records)

bench/.venv/bin/python - "$URI" "$PASSWORD" "$N" <<'PY'
import sys, time
import adbc_driver_flightsql.dbapi as flight_sql
uri, password, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with flight_sql.connect(uri, db_kwargs={"username": "tracer", "password": password}) as conn:
    cur = conn.cursor()
    for _ in range(20):  # warm up
        cur.execute("SELECT 1")
        cur.fetchall()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        cur.execute("SELECT 1")
        cur.fetchall()
        times.append((time.perf_counter() - start) * 1000)
times.sort()
print(f"{n} x SELECT 1: p50 {times[n // 2]:.1f} ms, p95 {times[n * 95 // 100]:.1f} ms, max {times[-1]:.1f} ms")
PY
sleep 0.5
echo "audit records written: $(( $(records) - before ))"
