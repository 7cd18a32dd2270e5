-- daily_contacts_by_location: regional monitoring without identifying anyone.
--
--   proxima sql -f sql/jobs/daily_contacts_by_location.sql --param from=<YYYY-MM-DD> --param to=<YYYY-MM-DD>
--
-- Contacts (sightings of a registered device by another) per day and per
-- 4-character geohash (about 39 × 20 km), with the number of distinct devices
-- involved. Cells with fewer than 10 distinct devices are suppressed, so that
-- no small group can be singled out. Sightings without a location are not counted.
SELECT
    day,
    substr(location, 1, 4) AS area,
    -- encounters has one row per side of each sighting.
    count(*) / 2 AS contacts,
    count(DISTINCT a) AS devices
FROM encounters
WHERE day BETWEEN CAST(${from} AS DATE) AND CAST(${to} AS DATE)
    AND location IS NOT NULL
GROUP BY day, substr(location, 1, 4)
HAVING count(DISTINCT a) >= 10
ORDER BY day, area;
