-- daily_contacts_by_location: regional monitoring without identifying anyone.
--
--   proxima sql -f sql/jobs/daily_contacts_by_location.sql --param from=<YYYY-MM-DD> --param to=<YYYY-MM-DD>
--   proxima sql --connect grpc://HOST:PORT --user <an analyst> -f … --param …
--
-- Contacts per day and per 4-character geohash (about 39 × 20 km), with the number of
-- distinct devices involved, from the aggregate view an analyst reads
-- (sql/views/daily_contacts_by_location.sql): cells with fewer than --min-cell distinct
-- devices (10 by default) are not in it, so that no small group can be singled out.
SELECT day, area, contacts, devices
FROM daily_contacts_by_location
WHERE day BETWEEN CAST(${from} AS DATE) AND CAST(${to} AS DATE)
ORDER BY day, area;
