-- encounters: every sighting of a registered device by another device, seen from both
-- sides. Each such observation yields (a, b, …) and (b, a, …), so the contacts of a
-- device are `SELECT … FROM encounters WHERE a = '<uuid>'`.
-- A device is heard by its MAC, or by a rotating identifier the server issued it, heard
-- within that identifier's epoch (`sighting_key` resolves it with the server's keys at
-- read time; `device_handle` is the device's side of the join). Sightings of anything
-- else (unknown MACs, replayed or forged identifiers, rolling proximity identifiers) and
-- of a device's own broadcast are ignored. `a_heard` says which side reported the sighting
-- (true: a heard b), so that one can ask whether the other side reported it too.
CREATE VIEW encounters AS
WITH device_keys AS (
    SELECT device_uuid, mac AS key FROM devices
    UNION ALL
    SELECT device_uuid, device_handle(device_uuid) AS key FROM devices
),
sightings AS (
    SELECT o.observer, d.device_uuid AS heard, o.observed_at, o.duration_s, o.rssi, o.tx_power, o.location, o.day
    FROM observations o
    JOIN device_keys d ON sighting_key(o.observed, o.observed_at) = d.key
    WHERE d.device_uuid <> o.observer
)
SELECT observer AS a, heard AS b, observed_at AS at, duration_s, rssi, tx_power, location, day, true AS a_heard FROM sightings
UNION ALL
SELECT heard AS a, observer AS b, observed_at AS at, duration_s, rssi, tx_power, location, day, false AS a_heard FROM sightings
