"""The same depth-2 traces as `proxima bench trace`, in DuckDB, over plain Parquet.

Usage: duckdb_trace.py EXPORT_DIR CONTACTS_CSV AT_RFC3339

EXPORT_DIR holds observations.parquet and devices.parquet (exported by
trace_vs_duckdb.sh); CONTACTS_CSV is what `proxima bench trace --contacts`
wrote. For each index case in it, this runs the SQL an analyst would write in
DuckDB for the rules of `trace_contacts` (README), times it, checks that it
finds exactly the same contacts, and prints latency percentiles.

Then the baseline an expert would build: the encounters of the 96-hour window
materialised once into a DuckDB table sorted by device (so that DuckDB's zone
maps narrow `a = ?` to a few row groups), its build time, and the same traces
over it (checked the same way).
"""

import csv
import sys
import time

import duckdb

# Depth 2, the rules of trace_contacts: level 1 within the 96 h lookback (high if
# the last contact is within 48 h), level 2 within 48 h, time-respecting (met
# after the level-1 contact was exposed), via = the level-1 contact giving the
# earliest meeting (ties: smallest UUID), each device at its lowest level.
TRACE_SQL = """
WITH obs AS (
    SELECT observer, observed, observed_at FROM read_parquet($observations)
    WHERE observed_at BETWEEN $at - INTERVAL 96 HOUR AND $at
),
dev AS (SELECT device_uuid, mac FROM read_parquet($devices)),
index_mac AS (SELECT mac FROM dev WHERE device_uuid = $index),
-- Level 1, both directions: the index heard b, or b heard the index.
level1_edges AS (
    SELECT d.device_uuid AS b, o.observed_at AS t
    FROM obs o JOIN dev d ON o.observed = d.mac
    WHERE o.observer = $index AND d.device_uuid <> $index
    UNION ALL
    SELECT o.observer AS b, o.observed_at AS t
    FROM obs o JOIN index_mac i ON o.observed = i.mac
    WHERE o.observer <> $index
),
level1 AS (
    SELECT b AS contact, min(t) AS exposed_at, max(t) AS last_contact_at
    FROM level1_edges GROUP BY b
),
level1_macs AS (
    SELECT l.contact, l.exposed_at, d.mac FROM level1 l JOIN dev d ON d.device_uuid = l.contact
),
-- Level 2 within the high window, after the level-1 contact's exposure, both directions.
level2_edges AS (
    SELECT d.device_uuid AS b, o.observed_at AS t, l.contact AS via
    FROM obs o
    JOIN level1_macs l ON o.observer = l.contact
    JOIN dev d ON o.observed = d.mac
    WHERE o.observed_at >= l.exposed_at AND o.observed_at >= $at - INTERVAL 48 HOUR
      AND d.device_uuid <> o.observer
    UNION ALL
    SELECT o.observer AS b, o.observed_at AS t, l.contact AS via
    FROM obs o JOIN level1_macs l ON o.observed = l.mac
    WHERE o.observed_at >= l.exposed_at AND o.observed_at >= $at - INTERVAL 48 HOUR
      AND o.observer <> l.contact
),
level2 AS (
    SELECT b AS contact, min(t) AS exposed_at, max(t) AS last_contact_at, arg_min(via, (t, via)) AS via
    FROM level2_edges
    WHERE b <> $index AND b NOT IN (SELECT contact FROM level1)
    GROUP BY b
)
SELECT contact, 1 AS contact_order,
       CASE WHEN last_contact_at >= $at - INTERVAL 48 HOUR THEN 'high' ELSE 'medium' END AS priority,
       epoch_us(exposed_at), epoch_us(last_contact_at), $index AS via
FROM level1
UNION ALL
SELECT contact, 2, 'medium', epoch_us(exposed_at), epoch_us(last_contact_at), via
FROM level2
"""


# The expert's table: every encounter of the window, both directions, sorted by device.
EXPERT_BUILD_SQL = """
CREATE OR REPLACE TABLE enc AS
WITH obs AS (
    SELECT observer, observed, observed_at FROM read_parquet($observations)
    WHERE observed_at BETWEEN $at - INTERVAL 96 HOUR AND $at
),
sightings AS (
    SELECT o.observer, d.device_uuid AS heard, o.observed_at AS seen_at
    FROM obs o JOIN read_parquet($devices) d ON o.observed = d.mac
    WHERE d.device_uuid <> o.observer
)
SELECT observer AS a, heard AS b, seen_at FROM sightings
UNION ALL
SELECT heard AS a, observer AS b, seen_at FROM sightings
ORDER BY a, seen_at
"""

EXPERT_TRACE_SQL = """
WITH level1 AS (
    SELECT b AS contact, min(seen_at) AS exposed_at, max(seen_at) AS last_contact_at
    FROM enc WHERE a = $index GROUP BY b
),
level2_edges AS (
    SELECT e.b, e.seen_at AS t, e.a AS via
    FROM enc e JOIN level1 l ON e.a = l.contact
    WHERE e.seen_at >= l.exposed_at AND e.seen_at >= $at - INTERVAL 48 HOUR
),
level2 AS (
    SELECT b AS contact, min(t) AS exposed_at, max(t) AS last_contact_at, arg_min(via, (t, via)) AS via
    FROM level2_edges
    WHERE b <> $index AND b NOT IN (SELECT contact FROM level1)
    GROUP BY b
)
SELECT contact, 1 AS contact_order,
       CASE WHEN last_contact_at >= $at - INTERVAL 48 HOUR THEN 'high' ELSE 'medium' END AS priority,
       epoch_us(exposed_at), epoch_us(last_contact_at), $index AS via
FROM level1
UNION ALL
SELECT contact, 2, 'medium', epoch_us(exposed_at), epoch_us(last_contact_at), via
FROM level2
"""


def run_traces(con, name, sql, params, indexes, expected):
    """Runs `sql` for every index case; prints each and the percentiles; returns (p50 ms, mismatches)."""
    latencies = []
    mismatches = 0
    for index in indexes:
        started = time.perf_counter()
        rows = con.execute(sql.replace("$at", "CAST($at AS TIMESTAMPTZ)"), {**params, "index": index}).fetchall()
        elapsed = time.perf_counter() - started
        latencies.append(elapsed)
        found = {(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows}
        same = found == expected[index]
        mismatches += not same
        print(f"  {index}: {len(found)} contacts in {elapsed * 1e3:.1f} ms{'' if same else ' MISMATCH'}")
        if not same:
            print(f"    only in DuckDB: {sorted(found - expected[index])[:5]}")
            print(f"    only in Proxima: {sorted(expected[index] - found)[:5]}")
    latencies.sort()
    p = lambda q: latencies[round((len(latencies) - 1) * q)] * 1e3  # noqa: E731
    print(f"duckdb {duckdb.__version__} {name}: p50 {p(0.5):.1f} ms, p95 {p(0.95):.1f} ms, max {p(1.0):.1f} ms")
    print(f"same contacts as Proxima ({name}): {len(indexes) - mismatches}/{len(indexes)} traces")
    return p(0.5), mismatches


def main():
    export_dir, contacts_csv, at = sys.argv[1:4]
    expected = {}
    indexes = []
    with open(contacts_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["index"] not in expected:
                indexes.append(row["index"])
                expected[row["index"]] = set()
            if not row["contact"]:
                continue  # an index case without contacts
            expected[row["index"]].add(
                (
                    row["contact"],
                    int(row["contact_order"]),
                    row["priority"],
                    int(row["exposed_at_us"]),
                    int(row["last_contact_at_us"]),
                    row["via"],
                )
            )

    con = duckdb.connect()
    params = {
        "observations": f"{export_dir}/observations.parquet",
        "devices": f"{export_dir}/devices.parquet",
        "at": at,
    }
    con.execute("SET TimeZone = 'UTC'")
    p50, mismatches = run_traces(con, "over Parquet", TRACE_SQL, params, indexes, expected)
    print(f"DUCKDB_P50_MS={p50:.3f}")

    started = time.perf_counter()
    con.execute(EXPERT_BUILD_SQL.replace("$at", "CAST($at AS TIMESTAMPTZ)"), params)
    rows = con.execute("SELECT count(*) FROM enc").fetchone()[0]
    print(f"expert baseline: encounters of the 96 h window materialised and sorted by device: {rows:,} rows in {time.perf_counter() - started:.1f} s")
    expert_p50, expert_mismatches = run_traces(
        con, "over the materialised encounters", EXPERT_TRACE_SQL, {"at": at}, indexes, expected
    )
    print(f"DUCKDB_EXPERT_P50_MS={expert_p50:.3f}")
    sys.exit(1 if mismatches or expert_mismatches else 0)


if __name__ == "__main__":
    main()
