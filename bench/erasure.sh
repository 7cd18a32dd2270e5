#!/usr/bin/env bash
# Erasure benchmark: how long one revoked device takes to leave an encrypted store.
#
#   bench/erasure.sh        (DEVICES=1000000 DAYS=14)
#
# 1. builds proxima in release (or uses PROXIMA_BIN); makes a master key and generates
#    DEVICES devices x DAYS days ending today, encrypted, into target/bench-erasure/store
#    (kept between runs: each run erases one more device);
# 2. times one maintenance round with nothing to erase (the baseline: compaction,
#    retention and index checks);
# 3. revokes the registered device that comes first by UUID (`proxima erasure revoke`) and
#    times the round that erases it (flush, one rewrite of every file holding its rows,
#    the record, the revocation), with its peak memory;
# 4. prints `proxima erasure status`, then times `proxima erasure verify` (every file of
#    the store read and every value hashed).
# BENCHMARKS.md records its output.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES="${DEVICES:-1000000}"
DAYS="${DAYS:-14}"
WORK="target/bench-erasure"
STORE="$WORK/store"
KEY="$WORK/master.key"

if [ -z "${PROXIMA_BIN:-}" ]; then
    cargo build --release --quiet
    PROXIMA_BIN=target/release/proxima
fi
mkdir -p "$WORK"
[ -f "$KEY" ] || "$PROXIMA_BIN" --master-key-file "$KEY" key init
P=("$PROXIMA_BIN" --data "$STORE" --master-key-file "$KEY")
if [ ! -d "$STORE/observations" ]; then
    echo "== generating $DEVICES devices x $DAYS days (encrypted)"
    /usr/bin/time -f "generation: %e s, peak RSS %M KiB" "${P[@]}" generate --devices "$DEVICES" --days "$DAYS"
fi
echo "== store: $(du -sh "$STORE" | cut -f1)"

echo "== a round with nothing to erase"
/usr/bin/time -f "baseline round: %e s, peak RSS %M KiB" "${P[@]}" maintain --once --sweep-grace 1s

device=$("${P[@]}" sql --format csv -c "SELECT device_uuid FROM devices WHERE device_uuid NOT IN (SELECT device_uuid FROM revocations) ORDER BY device_uuid LIMIT 1" | tail -1)
rows=$("${P[@]}" sql --format csv -c "SELECT count(*) FROM observations o JOIN devices d ON d.device_uuid = '$device' WHERE o.observer = d.device_uuid OR o.observed = d.mac" | tail -1)
echo "== erasing $device ($rows observation rows name it)"
"${P[@]}" erasure revoke "$device"
/usr/bin/time -f "erasure round: %e s, peak RSS %M KiB" "${P[@]}" maintain --once --sweep-grace 1s
"${P[@]}" erasure status | tail -1

echo "== verify"
sleep 2
"${P[@]}" maintain --once --sweep-grace 1s >/dev/null # deletes the replaced files
/usr/bin/time -f "verify: %e s, peak RSS %M KiB" "${P[@]}" erasure verify
