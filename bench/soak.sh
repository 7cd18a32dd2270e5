#!/usr/bin/env bash
# Soak: ten minutes of mixed load on `proxima serve` with exact counts (bench/soak.py says
# what runs). Builds proxima in release (or uses PROXIMA_BIN), installs the ADBC driver into
# bench/.venv, runs in a fresh target/bench-soak. BENCHMARKS.md records its output.
#
#   bench/soak.sh            (SECONDS_OF_LOAD=600)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
fi
bench/.venv/bin/python -c 'import adbc_driver_flightsql, pyarrow' 2>/dev/null ||
    bench/.venv/bin/pip install --quiet --disable-pip-version-check 'pyarrow>=15' 'adbc-driver-flightsql==1.*' 'adbc-driver-manager==1.*'
if [ -z "${PROXIMA_BIN:-}" ]; then
    cargo build --release --quiet
    PROXIMA_BIN=target/release/proxima
fi
rm -rf target/bench-soak
bench/.venv/bin/python -W ignore bench/soak.py "$PROXIMA_BIN" target/bench-soak "${SECONDS_OF_LOAD:-600}"
