-- daily_contacts_by_location: an aggregate for analysts (their only view of contacts).
--
-- Contacts (sightings of a registered device by another) per day and per 4-character
-- geohash (about 39 × 20 km), with the number of distinct devices involved. A cell with
-- fewer than ${min_cell} distinct devices (`proxima serve --min-cell`, 10 by default) is
-- not in the view at all, so no sum or filter over it shows one. Sightings without a
-- location are not counted. One statement, a SELECT: the engine makes it a view.
SELECT
    day,
    substr(location, 1, 4) AS area,
    -- encounters has one row per side of each sighting.
    count(*) / 2 AS contacts,
    count(DISTINCT a) AS devices
FROM encounters
WHERE location IS NOT NULL
GROUP BY day, substr(location, 1, 4)
HAVING count(DISTINCT a) >= ${min_cell}
