#!/usr/bin/env bash
# Cluster overhead: the same queries locally and on a Ballista cluster of one scheduler and
# two executors on this machine. Same machine, same cores: the figure is what the cluster
# costs (planning, serialising the plan, shuffles through the executors' work folders,
# results over Flight), not a speed-up.
#
#   bench/cluster.sh        (DEVICES=100000 DAYS=14 RUNS=3)
#
# 1. builds proxima in release (or uses PROXIMA_BIN) and generates DEVICES devices x DAYS
#    days into target/bench-cluster/store (kept between runs);
# 2. starts `proxima scheduler` and two `proxima executor` (2 slots each) on loopback;
# 3. runs each query RUNS times with `proxima sql` and with `proxima sql --ballista`, whole
#    command timed, and checks that both gave the same rows.
# BENCHMARKS.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES="${DEVICES:-100000}"
DAYS="${DAYS:-14}"
RUNS="${RUNS:-3}"
WORK="$PWD/target/bench-cluster"
STORE="$WORK/store"

if [ -z "${PROXIMA_BIN:-}" ]; then
    cargo build --release --quiet
    PROXIMA_BIN=target/release/proxima
fi
mkdir -p "$WORK"
export RUST_LOG=warn PROXIMA_AUDIT_DIR="$WORK/audit"
P=("$PROXIMA_BIN" --data "$STORE")
if [ ! -d "$STORE/observations" ]; then
    echo "== generating $DEVICES devices x $DAYS days"
    "${P[@]}" generate --devices "$DEVICES" --days "$DAYS" --seed 11
fi
echo "== store: $(du -sh "$STORE" | cut -f1), $("${P[@]}" sql --format csv -c 'SELECT count(*) FROM observations' | tail -1) observations"

PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
"${P[@]}" scheduler --listen 127.0.0.1:0 > "$WORK/scheduler.out" 2> "$WORK/scheduler.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q 'df://' "$WORK/scheduler.out" 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o 'df://[^ ]*' "$WORK/scheduler.out" | head -1)
for n in 1 2; do
    "${P[@]}" executor --scheduler "$URL" --flight-port $((50170 + 2 * n)) --grpc-port $((50171 + 2 * n)) \
        --slots 2 --memory 4GiB --work-dir "$WORK/work$n" > "$WORK/executor$n.out" 2> "$WORK/executor$n.log" &
    PIDS+=($!)
done
for n in 1 2; do
    for _ in $(seq 100); do grep -q 'Ballista executor on' "$WORK/executor$n.out" 2>/dev/null && break; sleep 0.1; done
done
echo "== cluster: $URL, 2 executors x 2 slots"

DEVICE=$("${P[@]}" sql --format csv -c "SELECT observer FROM observations GROUP BY observer ORDER BY count(*) DESC, observer LIMIT 1" | tail -1)
AT=$("${P[@]}" sql --format csv -c "SELECT max(observed_at) FROM observations" | tail -1)
QUERIES=(
    "14-day aggregate|SELECT day, count(*) AS n, count(DISTINCT observer) AS observers, avg(rssi) AS rssi FROM observations GROUP BY day ORDER BY day"
    "encounters by day|SELECT day, count(*) AS encounters FROM encounters GROUP BY day ORDER BY day"
    "trace, depth 2|SELECT count(*) AS contacts FROM trace_contacts('$DEVICE', TIMESTAMP '$AT', 2)"
    "one device's sightings|SELECT count(*) AS n FROM observations WHERE observer = '$DEVICE'"
)
for entry in "${QUERIES[@]}"; do
    name="${entry%%|*}"
    sql="${entry#*|}"
    for where in local cluster; do
        args=()
        [ "$where" = cluster ] && args=(--ballista "$URL")
        times=()
        for _ in $(seq "$RUNS"); do
            start=$(date +%s.%N)
            "${P[@]}" sql "${args[@]}" --format csv -c "$sql" > "$WORK/$where.csv"
            end=$(date +%s.%N)
            times+=("$(awk "BEGIN { printf \"%.2f\", $end - $start }")")
        done
        echo "$name, $where: ${times[*]} s"
    done
    cmp -s "$WORK/local.csv" "$WORK/cluster.csv" || { echo "$name: the cluster's rows differ"; exit 1; }
done
