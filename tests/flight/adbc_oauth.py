"""ADBC's Flight SQL driver signing in through an OpenID Connect provider (tests/oidc.rs).

The driver itself fetches an access token from the provider's token endpoint with the
client credentials flow (adbc.flight.sql.oauth.*) and sends it as a bearer token on every
call, with no handshake; gRPC's OAuth credentials need TLS, so the server is grpc+tls.

Environment: PROXIMA_TLS_URI (grpc+tls://localhost:port), PROXIMA_TLS_ROOT (the server's PEM
certificate), PROXIMA_TOKEN_URI, PROXIMA_CLIENT_ID, PROXIMA_CLIENT_SECRET, and PROXIMA_EXPECT:
"analyst" (the provider gave the client that role: its views answer, raw tables are not
found) or "revoked" (the provider deleted the client: connecting fails at the token
endpoint). Prints "adbc-oauth: all checks passed" at the end; exits non-zero on a failed check.
"""

import os

import adbc_driver_flightsql.dbapi as flight_sql

EXPECT = os.environ["PROXIMA_EXPECT"]


def connect():
    return flight_sql.connect(
        os.environ["PROXIMA_TLS_URI"],
        db_kwargs={
            "adbc.flight.sql.oauth.flow": "client_credentials",
            "adbc.flight.sql.oauth.token_uri": os.environ["PROXIMA_TOKEN_URI"],
            "adbc.flight.sql.oauth.client_id": os.environ["PROXIMA_CLIENT_ID"],
            "adbc.flight.sql.oauth.client_secret": os.environ["PROXIMA_CLIENT_SECRET"],
            "adbc.flight.sql.client_option.tls_root_certs": os.environ["PROXIMA_TLS_ROOT"],
        },
    )


def expect_error(action, *fragments):
    try:
        action()
    except Exception as e:  # the driver raises its own DB-API error classes
        message = str(e)
        for fragment in fragments:
            assert fragment in message, f"expected {fragment!r} in: {message}"
        return message
    raise AssertionError(f"expected an error containing {fragments}")


if EXPECT == "analyst":
    with connect() as conn:
        with conn.cursor() as cur:
            # The analysts' aggregate answers (an empty store: no rows, but a real plan).
            cur.execute("SELECT count(*) FROM daily_contacts_by_location")
            (count,) = cur.fetchone()
            assert count == 0, count
            cur.execute("SELECT 40 + 2")
            assert cur.fetchone() == (42,)
            # What an analyst may not read does not exist for them.
            expect_error(lambda: cur.execute("SELECT count(*) FROM observations").fetchone(), "not found")
            expect_error(lambda: cur.execute("SELECT count(*) FROM audit").fetchone(), "not found")
    print("analyst: aggregates answered, raw tables and the audit log not found")
elif EXPECT == "revoked":
    # The driver asks the token endpoint when the database is opened; the provider refuses
    # a client it deleted.
    def query():
        with connect() as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()

    message = expect_error(query, "invalid_client")
    print(f"revoked: {message.splitlines()[0]}")
else:
    raise SystemExit(f"PROXIMA_EXPECT={EXPECT!r}: analyst or revoked")
print("adbc-oauth: all checks passed")
