-- daily_cell_rates: contact and case rates per day and cell, from the rollups.
--
-- One row per day and 4-character geohash cell with a located contact that day: `contacts`
-- (sightings of a registered device by another, as `contact_rollup`'s encounters),
-- `devices` (the distinct devices on either side over the day, a HyperLogLog count),
-- `contacts_per_device` (2 × contacts / devices: each contact counts for both sides),
-- `confirmed` (new confirmed cases, as `case_rollup` places them; a confirmation counts
-- each person once, where suspected + confirmed would count most twice) and
-- `confirmed_per_1000_devices`. What the policy-intervention job
-- (`sql/jobs/intervention.sql`) and the dashboard compare. Read from `contact_partials`
-- and `case_partials`, never raw rows. A day and cell with fewer than ${min_cell} devices
-- (`proxima serve --min-cell`, 10 by default) is not in the view at all, its cases
-- neither; a confirmed count from 1 to ${min_count} − 1 (`--min-count`, 3 by default) is
-- NULL, and so is its rate. One statement, a SELECT: the engine makes it a view.
SELECT
    p.day,
    p.cell,
    p.contacts,
    p.devices,
    round(2.0 * p.contacts / p.devices, 4) AS contacts_per_device,
    CASE
        WHEN coalesce(c.confirmed, 0) = 0 OR c.confirmed >= ${min_count} THEN coalesce(c.confirmed, 0)
    END AS confirmed,
    CASE
        WHEN coalesce(c.confirmed, 0) = 0 OR c.confirmed >= ${min_count}
        THEN round(1000.0 * coalesce(c.confirmed, 0) / p.devices, 4)
    END AS confirmed_per_1000_devices
FROM (
    SELECT day, cell, sum(sightings) AS contacts, hll_count(hll_merge(devices)) AS devices
    FROM contact_partials
    GROUP BY day, cell
) AS p
LEFT JOIN (
    SELECT day, cell, sum(confirmed) AS confirmed
    FROM case_partials
    GROUP BY day, cell
) AS c ON p.day = c.day AND p.cell = c.cell
WHERE p.devices >= ${min_cell}
