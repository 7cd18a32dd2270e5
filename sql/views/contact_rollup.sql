-- contact_rollup: the contact rollup for analysts, kept current at every flush.
--
-- Per hour and 4-character geohash cell (about 39 × 20 km): sightings of a registered
-- device by another (`encounters`), those of 15 weighted minutes or more by
-- `exposure_risk` (`close_contacts`), the distinct devices on either side (a HyperLogLog
-- estimate: exact in practice up to a few hundred, about 1 % off beyond; see
-- BENCHMARKS.md) and the encounters per device (each sighting is a contact of both
-- sides). Read from `contact_partials`, the partial rows every flush adds for what it
-- stores (never a rescan of raw rows), so it equals the same figures computed from the
-- raw tables. An hour and cell with fewer than ${min_cell} devices (`proxima serve
-- --min-cell`, 10 by default) is not in the view at all. Sightings without a location are
-- not counted. One statement, a SELECT: the engine makes it a view.
SELECT
    hour,
    day,
    cell,
    sum(sightings) AS encounters,
    sum(close_contacts) AS close_contacts,
    hll_count(hll_merge(devices)) AS devices,
    round(2.0 * sum(sightings) / hll_count(hll_merge(devices)), 2) AS contacts_per_device
FROM contact_partials
GROUP BY hour, day, cell
HAVING hll_count(hll_merge(devices)) >= ${min_cell}
