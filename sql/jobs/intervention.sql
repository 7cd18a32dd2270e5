-- intervention: did contacts fall in a region after a policy date, more than elsewhere?
--
--   proxima sql -f sql/jobs/intervention.sql --param region=<geohash prefix> \
--       --param date=<YYYY-MM-DD> --param from=<YYYY-MM-DD> --param to=<YYYY-MM-DD>
--   proxima sql --connect grpc://HOST:PORT --user <an analyst> -f … --param …
--
-- A difference in differences over the analysts' aggregate (daily_contacts_by_location):
-- the contact rate is contacts per device-day (a cell's contacts over its distinct devices,
-- summed over cells and days), in the region (cells whose 4-character geohash starts with
-- `region`: `gcpv` is one cell, `gcp` about 32) and in every other cell, before `date`
-- (from `from`) and from `date` on (to `to`). `difference_in_differences` is the region's
-- change minus the others' change: negative when the region's contacts fell more. Cells
-- under --min-cell distinct devices are not in the aggregate, so they count nowhere; a group
-- with no cell left is NULL, and so is every difference that needs it.
WITH cells AS (
    SELECT
        starts_with(area, ${region}) AS in_region,
        day >= CAST(${date} AS DATE) AS after,
        contacts,
        devices
    FROM daily_contacts_by_location
    WHERE day BETWEEN CAST(${from} AS DATE) AND CAST(${to} AS DATE)
),
rates AS (
    SELECT
        sum(CASE WHEN in_region AND NOT after THEN contacts END)
            / CAST(sum(CASE WHEN in_region AND NOT after THEN devices END) AS DOUBLE) AS region_before,
        sum(CASE WHEN in_region AND after THEN contacts END)
            / CAST(sum(CASE WHEN in_region AND after THEN devices END) AS DOUBLE) AS region_after,
        sum(CASE WHEN NOT in_region AND NOT after THEN contacts END)
            / CAST(sum(CASE WHEN NOT in_region AND NOT after THEN devices END) AS DOUBLE) AS others_before,
        sum(CASE WHEN NOT in_region AND after THEN contacts END)
            / CAST(sum(CASE WHEN NOT in_region AND after THEN devices END) AS DOUBLE) AS others_after
    FROM cells
)
SELECT
    round(region_before, 4) AS region_before,
    round(region_after, 4) AS region_after,
    round(others_before, 4) AS others_before,
    round(others_after, 4) AS others_after,
    round((region_after - region_before) - (others_after - others_before), 4) AS difference_in_differences
FROM rates;
