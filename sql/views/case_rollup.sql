-- case_rollup: the case rollup for analysts, kept current at every flush.
--
-- Per day and 4-character geohash cell (about 39 × 20 km): new suspected and confirmed
-- cases, temperature readings and those of 38 °C or more, the alerts the cases issued by
-- priority, the cases reported by a device that held an alert, the devices seen in the
-- cell that day (`contact_rollup`'s devices, over the day), cases per 1,000 of them, and
-- `after_alert_share`: cases after an alert per alert issued (a secondary-attack-rate
-- proxy; over many days and cells, the share of alerted contacts who became cases). A case
-- or reading is in the cell its device last reported a sighting from, at or before it
-- (within 14 days), placed once by the flush that stores it; one with no such sighting is
-- in no cell and not counted. Read from `case_partials`, the partial rows every flush adds
-- (never a rescan of raw rows). A cell and day seen by fewer than ${min_cell} devices
-- (`proxima serve --min-cell`, 10 by default) is not in the view at all, however many
-- cases it had. One statement, a SELECT: the engine makes it a view.
SELECT
    c.day,
    c.cell,
    c.suspected,
    c.confirmed,
    c.suspected + c.confirmed AS cases,
    c.readings,
    c.fever_readings,
    c.alerts_high,
    c.alerts_medium,
    c.after_alert AS cases_after_alert,
    p.devices,
    round(1000.0 * (c.suspected + c.confirmed) / p.devices, 2) AS cases_per_1000_devices,
    CASE
        WHEN c.alerts_high + c.alerts_medium > 0
        THEN round(CAST(c.after_alert AS DOUBLE) / (c.alerts_high + c.alerts_medium), 4)
    END AS after_alert_share
FROM (
    SELECT
        day,
        cell,
        sum(suspected) AS suspected,
        sum(confirmed) AS confirmed,
        sum(readings) AS readings,
        sum(fever_readings) AS fever_readings,
        sum(alerts_high) AS alerts_high,
        sum(alerts_medium) AS alerts_medium,
        sum(after_alert) AS after_alert
    FROM case_partials
    GROUP BY day, cell
) AS c
JOIN (
    SELECT day, cell, hll_count(hll_merge(devices)) AS devices
    FROM contact_partials
    GROUP BY day, cell
) AS p ON c.day = p.day AND c.cell = p.cell
WHERE p.devices >= ${min_cell}
