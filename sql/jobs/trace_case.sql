-- trace_case: the contacts of a case, ranked for tracers.
--
--   proxima sql -f sql/jobs/trace_case.sql --param case_id=<case id>
--   proxima sql --connect grpc://HOST:PORT --user NAME -f sql/jobs/trace_case.sql --param case_id=<case id>
--
-- Over the network a tracer first declares the case as their purpose (the header
-- x-proxima-purpose, or SET proxima.purpose = 'case:<case id>'; `proxima sql
-- --connect` sets it from --purpose).
--
-- One row per contact found by trace_case (trace_contacts of the case's device at
-- the case's report time; the windows are the session's proxima.trace.* settings),
-- with its priority and the encounters it had with the device it was traced
-- through (`via`) from its exposure up to the report: how many, how long in
-- total, and their summed exposure risk in weighted minutes (exposure_risk; 15 is
-- the usual close-contact bar).
WITH the_case AS (
    SELECT reported_at FROM cases WHERE case_id = ${case_id}
)
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
FROM trace_case(${case_id}) c
CROSS JOIN the_case k
LEFT JOIN encounters e
    ON e.a = c.contact
    AND e.b = c.via
    AND e.at BETWEEN c.exposed_at AND k.reported_at
GROUP BY c.contact, c.contact_order, c.priority, c.exposed_at, c.last_contact_at, c.via
ORDER BY c.contact_order, exposure_risk DESC, c.contact;
