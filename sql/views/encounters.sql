-- encounters: every sighting of a registered device by another device, seen from both
-- sides. Each such observation yields (a, b, …) and (b, a, …), so the contacts of a
-- device are `SELECT … FROM encounters WHERE a = '<uuid>'`.
-- A device is heard by its MAC; by a rotating identifier the server issued it, heard
-- within that identifier's epoch (`sighting_key` resolves it with the server's keys at
-- read time; `device_handle` is the device's side of the join); or by a GAEN rolling
-- proximity identifier of a temporary exposure key it registered, heard within two hours
-- of the identifier's 10-minute interval (the Exposure Notification matching tolerance).
-- Sightings of anything else (unknown MACs, replayed or forged identifiers, RPIs of no
-- registered key) and of a device's own broadcast are ignored. `a_heard` says which side
-- reported the sighting (true: a heard b), so that one can ask whether the other side
-- reported it too.
CREATE VIEW encounters AS
WITH device_keys AS (
    SELECT device_uuid, mac AS key FROM devices
    UNION ALL
    SELECT device_uuid, device_handle(device_uuid) AS key FROM devices
),
key_intervals AS (
    SELECT device_uuid, tek,
           unnest(range(to_unixtime(valid_from) / 600, to_unixtime(valid_from) / 600 + rolling_period)) AS interval_number
    FROM exposure_keys
),
rpis AS (
    SELECT device_uuid, en_rpi(tek, interval_number) AS rpi, interval_number FROM key_intervals
),
sightings AS (
    SELECT o.observer, d.device_uuid AS heard, o.observed_at, o.duration_s, o.rssi, o.tx_power, o.location, o.day
    FROM observations o
    JOIN device_keys d ON sighting_key(o.observed, o.observed_at) = d.key
    WHERE d.device_uuid <> o.observer
    UNION ALL
    SELECT o.observer, r.device_uuid AS heard, o.observed_at, o.duration_s, o.rssi, o.tx_power, o.location, o.day
    FROM observations o
    JOIN rpis r ON o.observed = r.rpi
    WHERE r.device_uuid <> o.observer
      AND CAST(o.observed_at AS BIGINT) >= r.interval_number * 600000000 - 7200000000
      AND CAST(o.observed_at AS BIGINT) < (r.interval_number + 1) * 600000000 + 7200000000
)
SELECT observer AS a, heard AS b, observed_at AS at, duration_s, rssi, tx_power, location, day, true AS a_heard FROM sightings
UNION ALL
SELECT heard AS a, observer AS b, observed_at AS at, duration_s, rssi, tx_power, location, day, false AS a_heard FROM sightings
