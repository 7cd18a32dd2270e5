"""Clients of bench/live_trace.sh: a steady trickle of registrations, and timed traces.

    python bench/live_clients.py trickle URL PER_SECOND SECONDS OFFSET
    python bench/live_clients.py cases URL USER:PASSWORD DEVICES_FILE
    python bench/live_clients.py flight GRPC_URL USER PASSWORD DEVICES_FILE

`trickle` registers PER_SECOND devices a second for SECONDS (MACs from OFFSET on) and
prints how many it registered. `cases` reports each device of DEVICES_FILE as a confirmed
case through POST /v1/cases (the server flushes, traces and writes alerts) and prints the
request latencies; `flight` runs trace_contacts(device, now(), 2) for each over Flight
SQL with the ADBC driver and prints the latencies. Both print a line
`NAME p50 X ms, p95 Y ms, max Z ms` that the script picks up.
"""
import base64
import http.client
import json
import sys
import time
import urllib.parse

# A valid Ed25519 public key (RFC 8032, test 1): registration needs one, and no benchmark revokes.
RFC8032_KEY = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def percentiles(name, latencies):
    ordered = sorted(latencies)
    pick = lambda p: ordered[round((len(ordered) - 1) * p)] * 1000
    print(f"{name} p50 {pick(0.5):.1f} ms, p95 {pick(0.95):.1f} ms, max {pick(1.0):.1f} ms ({len(ordered)} traces)")


def connection(url):
    parsed = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)


def trickle(url, per_second, seconds, offset):
    conn = connection(url)
    registered = 0
    started = time.monotonic()
    i = offset
    while time.monotonic() - started < seconds:
        tick = time.monotonic()
        for _ in range(per_second):
            mac = ":".join(f"{b:02X}" for b in (0x06, (i >> 32) & 255, (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255))
            body = json.dumps({"mac": mac, "revocation_key": RFC8032_KEY})
            conn.request("POST", "/v1/devices", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 201:
                raise RuntimeError(f"registration {i}: {response.status}")
            registered += 1
            i += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    print(f"registered {registered} devices in {time.monotonic() - started:.0f} s while tracing")


def cases(url, credentials, devices_file):
    conn = connection(url)
    auth = "Basic " + base64.b64encode(credentials.encode()).decode()
    latencies = []
    for device in open(devices_file).read().split():
        body = json.dumps({"device_uuid": device, "status": "confirmed"})
        started = time.perf_counter()
        conn.request("POST", "/v1/cases", body, {"Content-Type": "application/json", "Authorization": auth})
        response = conn.getresponse()
        payload = json.loads(response.read())
        latencies.append(time.perf_counter() - started)
        if response.status != 201:
            raise RuntimeError(f"case {device}: {response.status} {payload}")
        print(f"  case {device}: {payload['alerts']} in {latencies[-1] * 1000:.1f} ms")
    percentiles("POST /v1/cases", latencies)


def flight(url, user, password, devices_file):
    import adbc_driver_flightsql.dbapi as flight_sql

    conn = flight_sql.connect(url, db_kwargs={"username": user, "password": password})
    cur = conn.cursor()
    latencies = []
    for device in open(devices_file).read().split():
        started = time.perf_counter()
        cur.execute(f"SELECT * FROM trace_contacts('{device}', now(), 2)")
        rows = cur.fetchall()
        latencies.append(time.perf_counter() - started)
        print(f"  flight {device}: {len(rows)} contacts in {latencies[-1] * 1000:.1f} ms")
    percentiles("Flight SQL trace_contacts", latencies)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "trickle":
        trickle(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif command == "cases":
        cases(args[0], args[1], args[2])
    elif command == "flight":
        flight(args[0], args[1], args[2], args[3])
    else:
        sys.exit(f"unknown command {command}")
