-- intervention: did contacts and cases fall in a region after a policy date, more than
-- elsewhere?
--
--   proxima sql -f sql/jobs/intervention.sql --param region=<geohash prefix> \
--       --param date=<YYYY-MM-DD> --param from=<YYYY-MM-DD> --param to=<YYYY-MM-DD>
--   proxima sql --connect grpc://HOST:PORT --user <an analyst> -f … --param …
--
-- A difference in differences over the analysts' rollups (the view `daily_cell_rates`),
-- one row per measure: `contacts_per_device_day` (2 × contacts over the devices of each
-- cell and day, summed over cells and days: each contact counts for both sides) and
-- `confirmed_per_1000_device_days` (new confirmed cases); each in the region (cells whose 4-character geohash starts
-- with `region`: `gcpv` is one cell, `gcp` about 32) and in every other cell, before `date`
-- (from `from`) and from `date` on (to `to`). `difference_in_differences` is the region's
-- change minus the others' change: negative when the region's rate fell more. Cells and
-- days under --min-cell devices are not in the view, so they count nowhere; a cell and day
-- whose confirmed count is suppressed (1 to --min-count − 1) counts in neither side of the
-- case rate, which is so biased low where cases are sparse (most cell-days 0, a few 1 or
-- 2): compare regions of many cells, or lower --min-count. A group with no cell left is
-- NULL, and so is every difference that needs it.
WITH cells AS (
    SELECT
        starts_with(cell, ${region}) AS in_region,
        day >= CAST(${date} AS DATE) AS after,
        contacts,
        confirmed,
        devices
    FROM daily_cell_rates
    WHERE day BETWEEN CAST(${from} AS DATE) AND CAST(${to} AS DATE)
),
groups AS (
    SELECT
        in_region,
        after,
        2.0 * sum(contacts) / sum(devices) AS contacts_per_device_day,
        1000.0 * sum(confirmed) / sum(CASE WHEN confirmed IS NOT NULL THEN devices END)
            AS confirmed_per_1000_device_days
    FROM cells
    GROUP BY in_region, after
),
rates AS (
    SELECT
        m.n,
        m.measure,
        max(CASE WHEN g.in_region AND NOT g.after THEN g.rate END) AS region_before,
        max(CASE WHEN g.in_region AND g.after THEN g.rate END) AS region_after,
        max(CASE WHEN NOT g.in_region AND NOT g.after THEN g.rate END) AS others_before,
        max(CASE WHEN NOT g.in_region AND g.after THEN g.rate END) AS others_after
    FROM (VALUES (1, 'contacts_per_device_day'), (2, 'confirmed_per_1000_device_days')) AS m (n, measure)
    LEFT JOIN (
        SELECT 1 AS n, in_region, after, contacts_per_device_day AS rate FROM groups
        UNION ALL
        SELECT 2, in_region, after, confirmed_per_1000_device_days FROM groups
    ) AS g ON g.n = m.n
    GROUP BY m.n, m.measure
)
SELECT
    measure,
    round(region_before, 4) AS region_before,
    round(region_after, 4) AS region_after,
    round(others_before, 4) AS others_before,
    round(others_after, 4) AS others_after,
    round((region_after - region_before) - (others_after - others_before), 4) AS difference_in_differences
FROM rates
ORDER BY n;
