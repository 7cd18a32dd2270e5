"""ADBC Flight SQL driver against a running `proxima serve` (started by tests/flight_sql.rs).

Environment: PROXIMA_URI (grpc://host:port), PROXIMA_TLS_URI (grpc+tls://localhost:port),
PROXIMA_TLS_ROOT (the PEM certificate the TLS server uses), PROXIMA_USER, PROXIMA_PASSWORD (a
tracer's), PROXIMA_PURPOSE (case:<case_id>) and PROXIMA_CASE_DEVICE (that case's device).
Exits non-zero on the first failed check.
"""

import os

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager

URI = os.environ["PROXIMA_URI"]
USER = os.environ["PROXIMA_USER"]
PASSWORD = os.environ["PROXIMA_PASSWORD"]
PURPOSE = os.environ["PROXIMA_PURPOSE"]
CASE_DEVICE = os.environ["PROXIMA_CASE_DEVICE"]


def connect(uri=URI, user=USER, password=PASSWORD, **extra):
    kwargs = dict(extra)
    if user is not None:
        kwargs["username"] = user
        kwargs["password"] = password
    return flight_sql.connect(uri, db_kwargs=kwargs)


def expect_error(action, *fragments):
    try:
        action()
    except Exception as e:  # the driver raises its own DB-API error classes
        message = str(e)
        for fragment in fragments:
            assert fragment in message, f"expected {fragment!r} in: {message}"
        return
    raise AssertionError(f"expected an error containing {fragments}")


with connect() as conn:
    with conn.cursor() as cur:
        # A tracer reads nothing without a purpose.
        expect_error(lambda: cur.execute("SELECT count(*) FROM observations").fetchone(), "declared purpose")

# With one, declared in the x-proxima-purpose header (an ADBC call header option), the
# case's rows (thousands).
with connect(**{"adbc.flight.sql.rpc.call_header.x-proxima-purpose": PURPOSE}) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT observer, observed, observed_at, duration_s FROM observations")
        table = cur.fetch_arrow_table()
        cur.execute("SELECT count(*) FROM observations")
        (count,) = cur.fetchone()
        assert table.num_rows == count and count > 1000, (table.num_rows, count)
        print(f"fetched {table.num_rows} rows")

        # Prepared statement with a bound parameter ($1).
        cur.execute("SELECT count(*) FROM observations WHERE duration_s >= $1", parameters=(0,))
        assert cur.fetchone()[0] == count
        cur.execute("SELECT count(*) FROM observations WHERE duration_s >= $1", parameters=(10**9,))
        assert cur.fetchone()[0] == 0

        # A malformed query: a clear error, and the connection still serves.
        expect_error(lambda: cur.execute("SELEC 1"), "SELEC")
        cur.execute("SELECT 42")
        assert cur.fetchone()[0] == 42

        # trace_contacts of the case's device through ADBC.
        cur.execute(f"SELECT * FROM trace_contacts('{CASE_DEVICE}', now())")
        traced = cur.fetch_arrow_table()
        assert traced.num_rows > 0, "the case's device has contacts"
        assert traced.column_names == [
            "contact", "contact_order", "priority", "exposed_at", "last_contact_at", "via",
        ], traced.column_names
        print(f"trace_contacts: {traced.num_rows} contacts")

    # Metadata.
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    catalog = next(c for c in objects if c["catalog_name"] == "proxima")
    schema = next(s for s in catalog["catalog_db_schemas"] if s["db_schema_name"] == "public")
    tables = {t["table_name"]: t for t in schema["db_schema_tables"]}
    assert {"observations", "encounters", "alerts", "cases"} == set(tables), sorted(tables)
    columns = [c["column_name"] for c in tables["observations"]["table_columns"]]
    assert columns[:3] == ["observer", "observed", "observed_at"], columns
    observations_schema = conn.adbc_get_table_schema("observations", catalog_filter="proxima", db_schema_filter="public")
    assert observations_schema.names[:2] == ["observer", "observed"], observations_schema.names
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "Proxima", info
    print("metadata ok")

# A wrong password and no credentials are refused.
expect_error(lambda: connect(password="wrong password").cursor().execute("SELECT 1"), "wrong user name or password")
expect_error(lambda: connect(user=None).cursor().execute("SELECT 1"), "no credentials")

# TLS, trusting the test's certificate.
with connect(
    os.environ["PROXIMA_TLS_URI"],
    **{adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value: os.environ["PROXIMA_TLS_ROOT"]},
) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM generate_series(1, 2000)")
        assert cur.fetchone()[0] == 2000
print("tls ok")
print("adbc: all checks passed")
