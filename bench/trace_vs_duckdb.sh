#!/usr/bin/env bash
# Trace benchmark: Proxima's trace_contacts against DuckDB on the same data.
#
#   bench/trace_vs_duckdb.sh [STORE_DIR]      (default: target/bench-store)
#
# 1. builds proxima in release and, if STORE_DIR is empty, generates 1 million
#    devices x 14 days into it (about 10 million observations a day) and its
#    observed index (written with the observations);
# 2. traces 20 random index cases at depth 2 with `proxima bench trace` (p50/p95,
#    index rows and bytes read per trace), saving the contacts found;
# 3. exports observations and devices as plain Parquet with DuckDB (the `duckdb`
#    package, installed into bench/.venv), runs the same 20 traces there as SQL,
#    checks both engines find the same contacts, then does the same over the
#    encounters of the window materialised in DuckDB and sorted by device (the
#    baseline an expert would build; its build time is printed), and prints the
#    latency ratios.
# BENCHMARKS.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE="${1:-target/bench-store}"
WORK="target/bench-trace"
DEVICES="${DEVICES:-1000000}"
DAYS="${DAYS:-14}"
started=$SECONDS

if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
fi
bench/.venv/bin/python -c 'import duckdb' 2>/dev/null ||
    bench/.venv/bin/pip install --quiet --disable-pip-version-check 'duckdb==1.*'

# PROXIMA_BIN: an already built release binary (skips the build).
if [ -z "${PROXIMA_BIN:-}" ]; then
    cargo build --release --quiet
    PROXIMA_BIN=target/release/proxima
fi
PROXIMA="$PROXIMA_BIN --data $STORE"
mkdir -p "$WORK"
if [ ! -d "$STORE/observations" ]; then
    echo "== generating $DEVICES devices x $DAYS days into $STORE"
    $PROXIMA generate --devices "$DEVICES" --days "$DAYS" --start 2026-11-01
fi

echo "== Proxima: trace_contacts, 20 index cases, depth 2"
$PROXIMA bench trace --cases 20 --depth 2 --seed 1 --contacts "$WORK/contacts.csv" | tee "$WORK/proxima.txt"
AT=$(sed -n 's/^tracing .* at \([^,]*\), depth.*/\1/p' "$WORK/proxima.txt")
PROXIMA_P50=$(sed -n 's/^p50 \([0-9.]*\) ms.*/\1/p' "$WORK/proxima.txt")

if [ ! -f "$WORK/export/observations.parquet" ] || [ "$STORE/observations" -nt "$WORK/export/observations.parquet" ]; then
    echo "== exporting observations and devices as plain Parquet (DuckDB COPY)"
    mkdir -p "$WORK/export"
    bench/.venv/bin/python - "$STORE" "$WORK/export" <<'PY'
import sys, time, duckdb
store, out = sys.argv[1:3]
started = time.perf_counter()
con = duckdb.connect()
con.execute(f"COPY (SELECT * FROM read_parquet('{store}/observations/*/*.parquet')) TO '{out}/observations.parquet' (FORMAT parquet)")
con.execute(f"COPY (SELECT * FROM read_parquet('{store}/devices/*.parquet')) TO '{out}/devices.parquet' (FORMAT parquet)")
print(f"exported in {time.perf_counter() - started:.1f} s")
PY
fi

echo "== DuckDB: the same traces over the exported Parquet"
bench/.venv/bin/python bench/duckdb_trace.py "$WORK/export" "$WORK/contacts.csv" "$AT" | tee "$WORK/duckdb.txt"
DUCKDB_P50=$(sed -n 's/^DUCKDB_P50_MS=//p' "$WORK/duckdb.txt")
EXPERT_P50=$(sed -n 's/^DUCKDB_EXPERT_P50_MS=//p' "$WORK/duckdb.txt")
python3 -c "print(f'p50 latency: Proxima $PROXIMA_P50 ms, DuckDB over Parquet $DUCKDB_P50 ms ({$DUCKDB_P50 / $PROXIMA_P50:.1f}x), DuckDB over materialised encounters $EXPERT_P50 ms ({$EXPERT_P50 / $PROXIMA_P50:.1f}x)')"
echo "benchmark took $((SECONDS - started)) s"
