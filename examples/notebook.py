"""A notebook-style session against Proxima's Flight SQL server, with ADBC, pandas and matplotlib.

Start the server (README: `cargo run --release -- serve --demo`), then:

    python3 -m venv .venv-notebook
    .venv-notebook/bin/pip install adbc-driver-flightsql pyarrow pandas matplotlib
    PROXIMA_PASSWORD=<the password serve printed> .venv-notebook/bin/python examples/notebook.py

Environment: PROXIMA_URI (default grpc://127.0.0.1:50051), PROXIMA_USER (default analyst),
PROXIMA_PASSWORD (required: the analyst's), PROXIMA_CHART (default daily_contacts.png).
As an analyst it reads the aggregate view daily_contacts_by_location (cells of fewer than
--min-cell devices are left out) for the last 14 days and saves a chart of contacts per
day for the busiest areas.
"""

import os
import pathlib
import sys

import adbc_driver_flightsql.dbapi as flight_sql
import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402

uri = os.environ.get("PROXIMA_URI", "grpc://127.0.0.1:50051")
user = os.environ.get("PROXIMA_USER", "analyst")
password = os.environ.get("PROXIMA_PASSWORD")
if not password:
    sys.exit("set PROXIMA_PASSWORD (proxima serve prints the generated analyst password at start)")
chart = pathlib.Path(os.environ.get("PROXIMA_CHART", "daily_contacts.png"))

sql = """
SELECT day, area, contacts, devices FROM daily_contacts_by_location
WHERE day BETWEEN CAST($1 AS DATE) AND CAST($2 AS DATE)
ORDER BY day, area
"""

with flight_sql.connect(uri, db_kwargs={"username": user, "password": password}) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT CAST(max(day) - 13 AS VARCHAR), CAST(max(day) AS VARCHAR) FROM daily_contacts_by_location")
        first, last = cur.fetchone()
        cur.execute(sql, parameters=(first, last))
        frame = cur.fetch_df()

print(f"{len(frame)} (day, area) cells from {first} to {last}")
print(frame.head(10).to_string(index=False))

busiest = frame.groupby("area")["contacts"].sum().nlargest(5).index
pivot = frame[frame["area"].isin(busiest)].pivot(index="day", columns="area", values="contacts")
ax = pivot.plot(figsize=(10, 5), marker="o", title="Contacts per day, five busiest 4-character geohash areas")
ax.set_xlabel("day")
ax.set_ylabel("contacts")
plt.tight_layout()
plt.savefig(chart)
print(f"chart saved to {chart}")
