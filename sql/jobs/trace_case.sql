-- trace_case: the contacts of a case, ranked for tracers.
--
--   proxima sql -f sql/jobs/trace_case.sql --param case=<device uuid> --param at=<RFC 3339 time>
--
-- One row per contact found by trace_contacts (the windows are the session's
-- proxima.trace.* settings), with its priority and the encounters it had with
-- the device it was traced through (`via`) from its exposure up to `at`: how
-- many, how long in total, and their summed exposure risk in weighted minutes
-- (exposure_risk; 15 is the usual close-contact bar).
SELECT
    c.contact,
    c.contact_order,
    c.priority,
    c.exposed_at,
    c.last_contact_at,
    c.via,
    count(e.at) AS encounters,
    coalesce(sum(e.duration_s), 0) AS total_duration_s,
    round(coalesce(sum(exposure_risk(e.duration_s, e.rssi, e.tx_power)), 0), 1) AS exposure_risk
FROM trace_contacts(${case}, ${at}) c
LEFT JOIN encounters e
    ON e.a = c.contact
    AND e.b = c.via
    AND e.at BETWEEN c.exposed_at AND CAST(${at} AS TIMESTAMP)
    -- Nothing older than the default retention is kept; this bound lets the scan skip old days.
    AND e.at >= CAST(${at} AS TIMESTAMP) - INTERVAL '21 days'
    AND e.at <= CAST(${at} AS TIMESTAMP)
GROUP BY c.contact, c.contact_order, c.priority, c.exposed_at, c.last_contact_at, c.via
ORDER BY c.contact_order, exposure_risk DESC, c.contact;
