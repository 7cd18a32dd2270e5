#!/usr/bin/env bash
# The analysts' dashboard and a 14-day regional query, at DEVICES devices over DAYS days
# (default 1,000,000 × 14, the issue's size; generated once into STORE and kept):
#
# - the dashboard's first view (`GET /dashboard` after sign-in, the first after the server
#   started and the next ones), in server time: the duration of the call's audit record,
#   beside curl's total;
# - a 14-day regional query over the rollups (`daily_cell_rates`) through Flight SQL as the
#   analyst (ADBC), in server time (the statement's audit record) and at the client;
# - the same figures computed from raw rows (`encounters`), which the analyst may not read,
#   by the local CLI with full access: the whole command, and `SELECT 1`'s for its start.
#
#   bench/dashboard.sh                         (DEVICES=1000000 DAYS=14 STORE=target/bench-dashboard)
#   RAW=0 bench/dashboard.sh                   (without the raw query: two minutes and 23 GB)
#
# Installs adbc-driver-flightsql and pyarrow into bench/.venv. PROXIMA_BIN: an already
# built release binary (otherwise it builds one). BENCHMARKS.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES="${DEVICES:-1000000}"
DAYS="${DAYS:-14}"
STORE="${STORE:-target/bench-dashboard}"
REGION="${REGION:-gcp}"
RUNS="${RUNS:-5}"
if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
fi
bench/.venv/bin/python -c 'import adbc_driver_flightsql, pyarrow' 2>/dev/null ||
    bench/.venv/bin/pip install --quiet --disable-pip-version-check 'adbc-driver-flightsql==1.*' 'pyarrow>=18'
if [ -z "${PROXIMA_BIN:-}" ]; then
    cargo build --release --quiet
    PROXIMA_BIN=target/release/proxima
fi

if [ ! -d "$STORE" ]; then
    echo "generating $DEVICES devices over $DAYS days into $STORE"
    /usr/bin/time -f "generate: %e s, %M KiB peak" "$PROXIMA_BIN" --data "$STORE" generate \
        --devices "$DEVICES" --days "$DAYS" --seed 5
fi
du -sh "$STORE"

WORK="$STORE.run"
rm -rf "$WORK" && mkdir -p "$WORK"
OUT="$WORK/serve.log"
"$PROXIMA_BIN" --data "$STORE" serve --flight 127.0.0.1:0 --http 127.0.0.1:0 --admin-http 127.0.0.1:0 \
    --audit-dir "$WORK/audit" --wal-dir "$WORK/wal" > "$OUT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 300); do
    grep -q "^audit log in" "$OUT" && break
    sleep 0.1
done
API=$(sed -n 's/^REST listening on \([^ ]*\).*/\1/p' "$OUT")
URI=$(sed -n 's/^Flight SQL listening on \([^ ]*\).*/\1/p' "$OUT")
PASSWORD=$(sed -n 's/^user analyst, password \([^ ]*\).*/\1/p' "$OUT")
# Server time of the last audited call of `action`, from its outcome record.
server_ms() {
    sleep 0.3
    find "$WORK/audit/log" -name '*.jsonl' -exec cat {} + |
        bench/.venv/bin/python -c '
import json, sys
action = sys.argv[1]
done = [r for r in map(json.loads, sys.stdin) if r.get("phase") == "done" and r.get("action", "").startswith(action)]
print(done[-1]["duration_ms"] if done else "?")' "$1"
}

COOKIES="$WORK/cookies"
curl -s -o /dev/null -c "$COOKIES" -H "origin: $API" --data-urlencode "user=analyst" \
    --data-urlencode "password=$PASSWORD" "$API/dashboard/login"
for i in $(seq "$RUNS"); do
    total=$(curl -s -o "$WORK/page.html" -w '%{time_total}' -b "$COOKIES" "$API/dashboard")
    echo "GET /dashboard #$i: server $(server_ms 'rest:GET /dashboard') ms, curl ${total} s, $(grep -o 'class="mark' "$WORK/page.html" | wc -l) marks"
done

FIRST=$("$PROXIMA_BIN" --data "$STORE" sql --format csv -c "SELECT CAST(max(day) - $((DAYS - 1)) AS VARCHAR) FROM contact_partials" | tail -1)
LAST=$("$PROXIMA_BIN" --data "$STORE" sql --format csv -c "SELECT CAST(max(day) AS VARCHAR) FROM contact_partials" | tail -1)
ROLLUP="SELECT day, sum(contacts) AS contacts, sum(devices) AS device_days FROM daily_cell_rates \
WHERE starts_with(cell, '$REGION') AND day BETWEEN DATE '$FIRST' AND DATE '$LAST' GROUP BY day ORDER BY day"
bench/.venv/bin/python - "$URI" "$PASSWORD" "$ROLLUP" "$RUNS" <<'PY'
import sys, time
import adbc_driver_flightsql.dbapi as flight_sql
uri, password, sql, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with flight_sql.connect(uri, db_kwargs={"username": "analyst", "password": password}) as conn:
    cur = conn.cursor()
    for i in range(runs):
        start = time.perf_counter()
        cur.execute(sql)
        rows = cur.fetchall()
        print(f"regional query over the rollups #{i + 1}: client {(time.perf_counter() - start) * 1000:.1f} ms, {len(rows)} days")
    cur.close()
PY
echo "  server time of the last: $(server_ms 'flight:DoGet') ms"

RAW_SQL="SELECT day, count(*) FILTER (WHERE a_heard) AS contacts FROM encounters \
WHERE location IS NOT NULL AND starts_with(location, '$REGION') AND day BETWEEN DATE '$FIRST' AND DATE '$LAST' \
GROUP BY day ORDER BY day"
kill $SERVER 2>/dev/null || true
wait $SERVER 2>/dev/null || true
if [ "${RAW:-1}" = 0 ]; then
    exit 0
fi
for i in 1 2; do
    /usr/bin/time -f "local SELECT 1 (process start): %e s" "$PROXIMA_BIN" --data "$STORE" sql -c "SELECT 1" > /dev/null
    /usr/bin/time -f "regional query over raw rows #$i (local CLI, whole command): %e s, %M KiB peak" \
        "$PROXIMA_BIN" --data "$STORE" sql -c "$RAW_SQL" > "$WORK/raw.txt"
done
echo "raw rows: $(grep -c '^| 20' "$WORK/raw.txt") days"
