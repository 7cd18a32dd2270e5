"""A notebook-style session against Proxima's Flight SQL server: the dashboard's figures with
ADBC, pandas, polars and matplotlib.

Start the server (README: `cargo run --release -- serve --demo`), then:

    python3 -m venv .venv-notebook
    .venv-notebook/bin/pip install adbc-driver-flightsql pyarrow pandas polars matplotlib
    PROXIMA_PASSWORD=<the analyst password serve printed> .venv-notebook/bin/python examples/notebook.py

Environment: PROXIMA_URI (default grpc://127.0.0.1:50051), PROXIMA_USER (default analyst),
PROXIMA_PASSWORD (required: the analyst's), PROXIMA_CHARTS (folder for the PNGs, default
`charts`), PROXIMA_REGION (the intervention's geohash prefix, default the 3-character prefix
with the most cells).

As an analyst it reads only the aggregate views (`daily_cell_rates`, `case_rollup`): cells
of fewer than --min-cell devices are not in them, and counts under --min-count are NULL.
It draws what the dashboard (`/dashboard`) draws and saves each figure as a PNG:

- contacts_per_day.png      contacts per day over the cells shown (pandas)
- cases_per_day.png         new suspected and confirmed cases per day (pandas)
- alerts_per_day.png        alerts issued per day, by priority (polars)
- cells.png                 contacts per device per cell on the last day, a heat map (polars)
- intervention.png          the policy-intervention comparison (the job, pandas)

Suppressed values stay missing (NaN in pandas, null in polars): they are never drawn as
numbers, and the totals per day add up the cells shown.
"""

import os
import pathlib
import sys

import adbc_driver_flightsql.dbapi as flight_sql
import matplotlib
import polars as pl

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402

uri = os.environ.get("PROXIMA_URI", "grpc://127.0.0.1:50051")
user = os.environ.get("PROXIMA_USER", "analyst")
password = os.environ.get("PROXIMA_PASSWORD")
if not password:
    sys.exit("set PROXIMA_PASSWORD (proxima serve prints the generated analyst password at start)")
charts = pathlib.Path(os.environ.get("PROXIMA_CHARTS", "charts"))
charts.mkdir(parents=True, exist_ok=True)
job = pathlib.Path(__file__).resolve().parent.parent / "sql" / "jobs" / "intervention.sql"

# The same statement the dashboard runs for its charts per day.
TRENDS = """
SELECT r.day, r.contacts,
  CASE WHEN c.day IS NULL THEN 0 ELSE c.suspected END AS suspected,
  CASE WHEN c.day IS NULL THEN 0 ELSE c.confirmed END AS confirmed,
  CASE WHEN c.day IS NULL THEN 0 ELSE c.alerts_high END AS alerts_high,
  CASE WHEN c.day IS NULL THEN 0 ELSE c.alerts_medium END AS alerts_medium
FROM (SELECT day, sum(contacts) AS contacts FROM daily_cell_rates GROUP BY day) AS r
LEFT JOIN (SELECT day, sum(suspected) AS suspected, sum(confirmed) AS confirmed,
  sum(alerts_high) AS alerts_high, sum(alerts_medium) AS alerts_medium FROM case_rollup GROUP BY day) AS c
  ON r.day = c.day
ORDER BY r.day
"""


def save(figure, name):
    path = charts / name
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    print(f"saved {path}")


with flight_sql.connect(uri, db_kwargs={"username": user, "password": password}) as conn:
    with conn.cursor() as cur:
        # pandas: the figures per day.
        cur.execute(TRENDS)
        trends = cur.fetch_df()
        cur.execute("SELECT day, cell, devices, contacts_per_device FROM daily_cell_rates ORDER BY day, cell")
        # polars: the cells, straight from the Arrow table ADBC returns.
        cells = pl.from_arrow(cur.fetch_arrow_table())
        first, last = cells["day"].min(), cells["day"].max()
        region = os.environ.get("PROXIMA_REGION") or (
            cells.group_by(pl.col("cell").str.slice(0, 3).alias("prefix"))
            .len()
            .sort(["len", "prefix"], descending=[True, False])["prefix"][0]
        )
        policy = first + (last - first) / 2
        # The intervention job: its parameters bound as the CLI's --param would.
        sql = job.read_text()
        for name, value in {"region": region, "date": policy, "from": first, "to": last}.items():
            sql = sql.replace("${" + name + "}", "'" + str(value).replace("'", "''") + "'")
        cur.execute(sql)
        intervention = cur.fetch_df()

print(f"{len(trends)} days from {first} to {last}, {cells['cell'].n_unique()} cells")
print(trends.to_string(index=False))

figure, ax = plt.subplots(figsize=(10, 4))
ax.bar(trends["day"].astype(str), trends["contacts"], color="#1565c0")
ax.set_title("Contacts per day (cells shown)")
ax.tick_params(axis="x", rotation=45)
save(figure, "contacts_per_day.png")

figure, ax = plt.subplots(figsize=(10, 4))
trends.set_index(trends["day"].astype(str))[["suspected", "confirmed"]].plot.bar(
    ax=ax, color=["#ffb74d", "#c62828"], title="New cases per day (suppressed counts left out)"
)
save(figure, "cases_per_day.png")

alerts = pl.from_pandas(trends[["day", "alerts_high", "alerts_medium"]])
figure, ax = plt.subplots(figsize=(10, 4))
days = [str(d) for d in alerts["day"].to_list()]
width = 0.4
positions = range(len(days))
ax.bar([p - width / 2 for p in positions], alerts["alerts_high"].fill_null(0), width, label="high", color="#6a1b9a")
ax.bar([p + width / 2 for p in positions], alerts["alerts_medium"].fill_null(0), width, label="medium", color="#ba68c8")
ax.set_xticks(list(positions), days, rotation=45)
ax.set_title("Alerts issued per day")
ax.legend()
save(figure, "alerts_per_day.png")

# A heat map of the last day: cells as a table of rows (first 3 characters) by the 4th.
day = cells.filter(pl.col("day") == last).with_columns(
    pl.col("cell").str.slice(0, 3).alias("prefix"), pl.col("cell").str.slice(3, 1).alias("sub")
)
grid = day.pivot(on="sub", index="prefix", values="contacts_per_device").sort("prefix")
columns = sorted(c for c in grid.columns if c != "prefix")
figure, ax = plt.subplots(figsize=(8, 1 + 0.6 * len(grid)))
image = ax.imshow(grid.select(columns).to_numpy().astype(float), cmap="YlOrRd")
ax.set_xticks(range(len(columns)), columns)
ax.set_yticks(range(len(grid)), grid["prefix"].to_list())
ax.set_title(f"Contacts per device per cell, {last} (blank: not shown)")
figure.colorbar(image, ax=ax)
save(figure, "cells.png")

print(intervention.to_string(index=False))
figure, ax = plt.subplots(figsize=(10, 4))
intervention.set_index("measure")[["region_before", "region_after", "others_before", "others_after"]].plot.bar(
    ax=ax, rot=0, title=f"Policy intervention: region {region} from {policy}"
)
save(figure, "intervention.png")
