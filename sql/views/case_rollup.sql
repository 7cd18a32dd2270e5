-- case_rollup: the case rollup for analysts, kept current at every flush.
--
-- Per day and 4-character geohash cell (about 39 × 20 km): the devices seen in the cell
-- that day (`contact_rollup`'s devices, over the day), new suspected and new confirmed
-- cases (a confirmation is a report of its own, so a person suspected then confirmed is in
-- both columns: add them up for reports, not for people), confirmed cases per 1,000
-- devices, temperature readings and those of 38 °C or more, the alerts the case reports
-- issued by priority, the confirmed cases reported by a device that held an alert, and
-- `after_alert_share`: those per alert issued (a secondary-attack-rate proxy; over many
-- days and cells, the share of alerted contacts who became confirmed cases). A case or
-- reading is in the cell its device last reported a sighting from, at or before it
-- (within 14 days), placed once by the flush that stores it; one with no such sighting is
-- in no cell and not counted. Read from `case_partials`, the partial rows every flush adds
-- (never a rescan of raw rows).
--
-- Small numbers are suppressed: a cell and day seen by fewer than ${min_cell} devices
-- (`proxima serve --min-cell`, 10 by default) is not in the view at all; a count from 1
-- to ${min_count} − 1 (`--min-count`, 3 by default) is NULL, and so is every rate over it;
-- the alert counts and the share are NULL unless the case reports that issued them
-- (suspected + confirmed) are at least ${min_count}, so that no row tells one case's
-- number of contacts, and the share is NULL unless both alert counts are shown (it would
-- give back their sum). One statement, a SELECT: the
-- engine makes it a view.
SELECT
    c.day,
    c.cell,
    p.devices,
    CASE WHEN c.suspected = 0 OR c.suspected >= ${min_count} THEN c.suspected END AS suspected,
    CASE WHEN c.confirmed = 0 OR c.confirmed >= ${min_count} THEN c.confirmed END AS confirmed,
    CASE
        WHEN c.confirmed = 0 OR c.confirmed >= ${min_count}
        THEN round(1000.0 * c.confirmed / p.devices, 2)
    END AS confirmed_per_1000_devices,
    CASE WHEN c.readings = 0 OR c.readings >= ${min_count} THEN c.readings END AS readings,
    CASE
        WHEN c.fever_readings = 0 OR c.fever_readings >= ${min_count} THEN c.fever_readings
    END AS fever_readings,
    CASE
        WHEN c.reports = 0 OR (c.reports >= ${min_count} AND (c.alerts_high = 0 OR c.alerts_high >= ${min_count}))
        THEN c.alerts_high
    END AS alerts_high,
    CASE
        WHEN c.reports = 0 OR (c.reports >= ${min_count} AND (c.alerts_medium = 0 OR c.alerts_medium >= ${min_count}))
        THEN c.alerts_medium
    END AS alerts_medium,
    CASE
        WHEN c.confirmed_after_alert = 0 OR c.confirmed_after_alert >= ${min_count}
        THEN c.confirmed_after_alert
    END AS confirmed_after_alert,
    CASE
        WHEN (c.confirmed_after_alert = 0 OR c.confirmed_after_alert >= ${min_count})
            AND c.reports >= ${min_count}
            AND (c.alerts_high = 0 OR c.alerts_high >= ${min_count})
            AND (c.alerts_medium = 0 OR c.alerts_medium >= ${min_count})
            AND c.alerts_high + c.alerts_medium > 0
        THEN round(CAST(c.confirmed_after_alert AS DOUBLE) / (c.alerts_high + c.alerts_medium), 4)
    END AS after_alert_share
FROM (
    SELECT
        day,
        cell,
        sum(suspected) AS suspected,
        sum(confirmed) AS confirmed,
        sum(suspected) + sum(confirmed) AS reports,
        sum(readings) AS readings,
        sum(fever_readings) AS fever_readings,
        sum(alerts_high) AS alerts_high,
        sum(alerts_medium) AS alerts_medium,
        sum(confirmed_after_alert) AS confirmed_after_alert
    FROM case_partials
    GROUP BY day, cell
) AS c
JOIN (
    SELECT day, cell, hll_count(hll_merge(devices)) AS devices
    FROM contact_partials
    GROUP BY day, cell
) AS p ON c.day = p.day AND c.cell = p.cell
WHERE p.devices >= ${min_cell}
