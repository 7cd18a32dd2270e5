-- encounters: every sighting of a registered device's MAC by another device,
-- seen from both sides. Each such observation yields (a, b, …) and (b, a, …),
-- so the contacts of a device are `SELECT … FROM encounters WHERE a = '<uuid>'`.
-- Sightings of identifiers that are not a registered MAC (unknown devices,
-- rolling proximity identifiers) and of a device's own MAC are ignored.
CREATE VIEW encounters AS
WITH sightings AS (
    SELECT o.observer, d.device_uuid AS heard, o.observed_at, o.duration_s, o.rssi, o.tx_power, o.location, o.day
    FROM observations o
    JOIN devices d ON o.observed = d.mac
    WHERE d.device_uuid <> o.observer
)
SELECT observer AS a, heard AS b, observed_at AS at, duration_s, rssi, tx_power, location, day FROM sightings
UNION ALL
SELECT heard AS a, observer AS b, observed_at AS at, duration_s, rssi, tx_power, location, day FROM sightings
