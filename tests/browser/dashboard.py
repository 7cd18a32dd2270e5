"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

Run by the integration test `dashboard::a_browser_signs_in_reads_the_charts_and_moves_the_slider`
(which starts `proxima serve` on a generated store and passes what to expect), never on
its own in CI. It signs in as the analyst through the page's form, counts the marks of
every chart, compares values the page shows with the same figures asked over Flight SQL
(ADBC, as the same analyst), moves the day slider and checks the grid it fetched, and
saves a screenshot. Exit status 0 and a last line `ok` when every check held.

    python dashboard.py --url http://127.0.0.1:PORT --flight grpc://127.0.0.1:PORT \
        --user analyst --password PW --days N --cells M --screenshot out.png
"""

import argparse
import json
import math
import os
import sys

import adbc_driver_flightsql.dbapi as flight_sql
from playwright.sync_api import sync_playwright

# Debian's Chromium in a closed network: no first-run, sync, component or background
# fetches (each would be refused and retried), no GPU, no sandbox (CI runs as root).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def close(a, b):
    return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-4)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--flight", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--days", type=int, required=True, help="days the charts must have")
    parser.add_argument("--cells", type=int, required=True, help="cells the grid must have")
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--chromium", default=os.environ.get("PROXIMA_CHROMIUM", "/usr/bin/chromium"))
    args = parser.parse_args()

    sql = flight_sql.connect(args.flight, db_kwargs={"username": args.user, "password": args.password})
    cursor = sql.cursor()

    def answer(query, *parameters):
        cursor.execute(query, parameters=parameters or None)
        return cursor.fetchall()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 900, "height": 1200})
        # A loaded 2-core CI machine runs the server's queries, the browser and this script.
        page.set_default_timeout(120_000)
        outside = []
        # Nothing but the server itself may be asked for anything.
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(args.url) else None)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        page.goto(args.url + "/dashboard")
        check(page.locator("form[action='/dashboard/login']").count() == 1, "the sign-in form is shown first")
        check(page.locator(".mark").count() == 0, "nothing is drawn before signing in")
        page.fill("input[name=user]", args.user)
        page.fill("input[name=password]", args.password)
        page.click("button[type=submit]")
        page.wait_for_selector("#contacts-chart")

        counts = {
            "contacts-chart": page.locator("#contacts-chart .mark").count(),
            "cases-chart": page.locator("#cases-chart .mark").count(),
            "alerts-chart": page.locator("#alerts-chart .mark").count(),
            "grid-chart": page.locator("#grid-chart .mark").count(),
            "intervention-chart": page.locator("#intervention-chart .mark").count(),
        }
        expected = {
            "contacts-chart": args.days,
            "cases-chart": 2 * args.days,
            "alerts-chart": 2 * args.days,
            "grid-chart": args.cells,
            "intervention-chart": 8,
        }
        check(counts == expected, f"marks per chart: {counts}, expected {expected}")
        check(
            page.locator(".mark[data-suppressed='true'][data-value]").count() == 0,
            "a suppressed mark carries no value",
        )

        # A bar and a cell the page shows equal the SQL answers.
        last_bar = page.locator("#contacts-chart .mark").last
        day = last_bar.get_attribute("data-day")
        shown = last_bar.get_attribute("data-value")
        [(contacts,)] = answer("SELECT sum(contacts) FROM daily_cell_rates WHERE day = CAST($1 AS DATE)", day)
        check(close(shown, contacts), f"contacts on {day}: page {shown}, SQL {contacts}")

        def grid_matches_sql(day, measure="contacts_per_device"):
            cells = page.locator("#grid-chart .mark.cell")
            valued = 0
            for i in range(cells.count()):
                cell = cells.nth(i)
                name, value = cell.get_attribute("data-cell"), cell.get_attribute("data-value")
                rows = answer(
                    f"SELECT {measure} FROM daily_cell_rates WHERE day = CAST($1 AS DATE) AND cell = $2",
                    day,
                    name,
                )
                if value is None:
                    check(rows == [] or rows[0][0] is None, f"{name} on {day} is drawn suppressed but SQL shows {rows}")
                    check("suppressed" in cell.inner_text(), f"{name} on {day} says suppressed")
                else:
                    valued += 1
                    check(rows and close(value, rows[0][0]), f"{name} on {day}: page {value}, SQL {rows}")
            return valued

        check(page.locator("#grid-chart").get_attribute("data-day") == day, "the grid shows the last day first")
        check(grid_matches_sql(day) > 0, "the grid shows some cell")

        # The slider, moved to the first day, fetches that day's grid.
        days = page.locator("#day-slider").get_attribute("data-days").split(",")
        check(len(days) == args.days, f"the slider spans {len(days)} days, expected {args.days}")
        page.focus("#day-slider")
        page.keyboard.press("Home")
        page.wait_for_selector(f"#grid-chart[data-day='{days[0]}']")
        check(page.locator("#day-label").inner_text() == days[0], "the slider's label says its day")
        grid_matches_sql(days[0])
        check(
            page.locator("#cells-day-json").get_attribute("href").endswith("day=" + days[0]),
            "the day's download follows the slider",
        )

        # Coloured by confirmed cases per 1,000: where the count is suppressed the cell says
        # so, and where SQL shows a rate the page shows the same.
        with page.expect_navigation():
            page.select_option("#measure", "confirmed_per_1000_devices")
        page.wait_for_selector("#grid-chart[data-measure='confirmed_per_1000_devices']")
        grid_matches_sql(days[0], "confirmed_per_1000_devices")
        check(
            page.locator("#grid-chart").get_attribute("data-day") == days[0],
            "the measure changes, the day stays",
        )
        with page.expect_navigation():
            page.select_option("#measure", "contacts_per_device")

        page.screenshot(path=args.screenshot, full_page=True)
        check(not errors, f"script errors: {errors}")
        check(not outside, f"requests beyond the server: {outside}")
        browser.close()
    cursor.close()
    sql.close()
    print(json.dumps({"marks": counts, "day": day, "first_day": days[0]}))
    print("ok")


if __name__ == "__main__":
    main()
