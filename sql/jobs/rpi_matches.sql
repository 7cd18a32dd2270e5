-- rpi_matches: who heard an infected person's uploaded GAEN key, and when.
--
--   proxima sql -f sql/jobs/rpi_matches.sql --param tek=<32 hex digits> --param start=<rolling start interval number>
--
-- en_rpis derives the key's 144 rolling proximity identifiers (one per 10-minute
-- interval from `start`); a sighting matches when it heard one of them within
-- two hours of its interval (the clock tolerance of the GAEN design).
SELECT
    o.observer,
    o.observed AS rpi,
    r.interval_number,
    o.observed_at,
    o.duration_s,
    o.rssi,
    o.tx_power,
    round(exposure_risk(o.duration_s, o.rssi, o.tx_power), 1) AS exposure_risk
FROM en_rpis(${tek}, CAST(${start} AS BIGINT)) r
JOIN observations o ON o.observed = r.rpi
WHERE o.observed_at >= r.valid_from - INTERVAL '2 hours'
    AND o.observed_at < r.valid_until + INTERVAL '2 hours'
    -- The key's whole period with the tolerance, as constants: only those days are read.
    AND o.observed_at >= to_timestamp_seconds(CAST(${start} AS BIGINT) * 600) - INTERVAL '2 hours'
    AND o.observed_at < to_timestamp_seconds(CAST(${start} AS BIGINT) * 600 + 144 * 600) + INTERVAL '2 hours'
ORDER BY o.observed_at, o.observer;
